"""Reads TFRecord files in a process of its own (tensorflow beside torchvision/open_clip segfaults, see NOTES.md).

Writes one JSON line per record to stdout:
  {"file": ..., "index": i, "features": {key: {"type": "bytes"|"int64"|"float", "values": [...]}}}
with bytes values base64-encoded, or, for a record that cannot be read (CRC error, not a tf.train.Example):
  {"file": ..., "index": i, "error": "..."}
Import nothing from this project here: it must never share a process with torch-side code.
"""

import argparse
import base64
import json
import os
import struct
import sys

# Record framing (tensorflow/core/lib/io/record_writer.cc): uint64 length, uint32 masked CRC of the length,
# the data, uint32 masked CRC of the data.
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


def feature_to_json(feature):
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        values = [base64.b64encode(value).decode("ascii") for value in feature.bytes_list.value]
        return {"type": "bytes", "values": values}
    if kind == "int64_list":
        return {"type": "int64", "values": list(feature.int64_list.value)}
    if kind == "float_list":
        return {"type": "float", "values": list(feature.float_list.value)}
    return {"type": "empty", "values": []}


def record_to_json(tf, path, index, data):
    try:
        example = tf.train.Example.FromString(data)
    except Exception as error:  # protobuf's DecodeError: a record that is not a tf.train.Example
        return {"file": path, "index": index, "error": f"not a tf.train.Example ({type(error).__name__})"}
    features = {key: feature_to_json(feature) for key, feature in sorted(example.features.feature.items())}
    return {"file": path, "index": index, "features": features}


def next_offset_after(handle, offset, file_size):
    """The offset of the record after the one at `offset`, from its length field (None if that field is garbage)."""
    handle.seek(offset)
    header = handle.read(8)
    if len(header) < 8:
        return None
    (length,) = struct.unpack("<Q", header)
    following = offset + _HEADER_BYTES + length + _FOOTER_BYTES
    return following if following <= file_size else None


def read_uncompressed(tf, path):
    """Yields JSON-ready records; a record failing its CRC is reported and reading goes on after it.

    tf.data stops at the first corrupt record, so records are read by offset with TensorFlow's random-access
    reader (which checks both CRCs) and the next offset comes from the corrupt record's own length field.
    """
    from tensorflow.python.lib.io import tf_record

    reader = tf_record.tf_record_random_reader(path)
    file_size = os.path.getsize(path)
    offset, index = 0, 0
    with open(path, "rb") as handle:
        while offset < file_size:
            try:
                data, next_offset = reader.read(offset)
            except tf.errors.DataLossError as error:
                next_offset = next_offset_after(handle, offset, file_size)
                reason = f"corrupt record (CRC check failed: {error.message})"
                if next_offset is None:
                    yield {"file": path, "index": index, "error": f"{reason}; the rest of the file cannot be framed"}
                    return
                yield {"file": path, "index": index, "error": reason}
            else:
                yield record_to_json(tf, path, index, data)
            offset, index = next_offset, index + 1


def read_gzip(tf, path):
    """GZIP TFRecords can only be read in order: a corrupt record ends the file (reported)."""
    iterator = iter(tf.data.TFRecordDataset(path, compression_type="GZIP"))
    index = 0
    while True:
        try:
            data = next(iterator)
        except StopIteration:
            return
        except tf.errors.DataLossError as error:
            reason = f"corrupt record ({error.message}); the rest of the gzip file is unreadable"
            yield {"file": path, "index": index, "error": reason}
            return
        yield record_to_json(tf, path, index, data.numpy())
        index += 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="TFRecord files (plain or GZIP), read in the order given")
    parser.add_argument("--compression", choices=("auto", "none", "gzip"), default="auto",
                        help="auto: GZIP for names ending in .gz/.gzip (the files carry no marker TensorFlow checks)")
    parser.add_argument("--limit", type=int, default=None,
                        help="stop after this many records in all (e.g. 1 to inspect a file)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    written = 0
    for path in args.files:
        compressed = args.compression == "gzip" or (args.compression == "auto" and path.endswith((".gz", ".gzip")))
        for record in (read_gzip if compressed else read_uncompressed)(tf, path):
            sys.stdout.write(json.dumps(record) + "\n")
            written += 1
            if args.limit is not None and written >= args.limit:
                sys.stdout.flush()
                return 0
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
