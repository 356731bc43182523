"""TLS for the node's associations (pynetdicom takes an ssl.SSLContext): the listening side presents the node's
certificate and, given CA certificates, requires the caller's (mutual TLS); the sending side checks the
destination's certificate and host name against them. TLS 1.2 at least, as DICOM's BCP 195 profiles ask."""

from __future__ import annotations

import ssl


def server_context(tls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls.ca_certificates)
    return context


def client_context(tls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)  # for destinations that require the node's
    return context
