"""What `cliptt5-node status` shows, read from the node's database (running or not, without changing it): the
studies waiting to be drafted, the results their destinations have not taken yet, refused studies and refusals."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from modeling_cliptt5.node.database import NodeDatabase
from modeling_cliptt5.node.storage import StorageLayout


class NoNodeDatabase(FileNotFoundError):
    """No node has kept its database in that storage folder."""


def node_status(storage) -> dict:
    layout = StorageLayout(Path(storage))
    if not layout.database.is_file():
        raise NoNodeDatabase(f"no node database in {layout.root} (no {layout.database.name}): is that the node's "
                             "storage folder, and has the node run?")
    database = NodeDatabase(layout.database, read_only=True)
    try:
        return {"storage": str(layout.root), **database.status(time.time())}
    finally:
        database.close()


def status_text(status) -> str:
    """The status as lines for a terminal."""
    counts = status["studies"]
    lines = [f"storage {status['storage']}",
             "studies: " + (", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "none yet")
             + f"; {status['results_sent']} result(s) sent"]
    lines.append(f"queue ({len(status['queue'])} waiting to be drafted):")
    lines += [f"  {row['study_instance_uid']}  {row['instances']} instance(s), last one "
              f"{row['seconds_since_last_instance']:.0f} s ago" for row in status["queue"]]
    lines.append(f"outbox ({len(status['outbox'])} result(s) not yet taken by their destination):")
    lines += [f"  SR {row['result_uid']} of study {row['study_instance_uid']} -> {row['destination']}: "
              f"{row['attempts']} attempt(s), waiting {row['waiting_seconds']:.0f} s, next try in "
              f"{max(0.0, row['next_attempt_in_seconds']):.0f} s" + (f"; last error: {row['last_error']}"
                                                                       if row["last_error"] else "")
              for row in status["outbox"]]
    if status["refused_studies"]:
        lines.append("refused studies (no result sent; failed ones are drafted again after a restart):")
        lines += [f"  {row['study_instance_uid']} {row['state']} at {when(row['finished_at'])}: {row['reason']}"
                  for row in status["refused_studies"]]
    if status["late_instances"]:
        lines.append("instances that arrived after their study was finished (kept, not drafted):")
        lines += [f"  study {row['study_instance_uid']}: {row['late_instances']}" for row in status["late_instances"]]
    if status["refusals"]:
        lines.append("latest refusals:")
        lines += [f"  {when(row['at'])} {row['what']} from {row['calling_ae_title'] or '?'} "
                  f"({row['address'] or '?'}): {row['reason']}" for row in status["refusals"]]
    return "\n".join(lines)


def when(timestamp):
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z") if timestamp else "?"
