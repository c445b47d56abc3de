"""How the Python examples reach control: TLS, verified against the mesh
trust bundle that control writes (``trust_bundle_file``) or prints
(``redfire-control trust-bundle``). Plaintext only with ``--insecure``, for a
control started with ``--dev-insecure-control``.

Control's certificate names ``localhost``, 127.0.0.1 and ::1 by default (its
``tls_names`` setting); the channel checks it against ``--server-name``
(default ``localhost``), whatever address it dials.
"""

import grpc


def add_arguments(parser):
    """The connection flags every example takes."""
    parser.add_argument("--target", default="127.0.0.1:15010", help="control gRPC address, host:port")
    parser.add_argument("--ca-file", help="mesh trust bundle (PEM) to verify control's certificate with")
    parser.add_argument("--server-name", default="localhost", help="name control's certificate must carry")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext, for a control run with --dev-insecure-control"
    )


def open_channel(args):
    """A channel to control as the flags say; TLS unless --insecure."""
    if args.insecure:
        return grpc.insecure_channel(args.target)
    if not args.ca_file:
        raise SystemExit("error: --ca-file is needed to verify control's certificate (or --insecure)")
    with open(args.ca_file, "rb") as f:
        roots = f.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(
        args.target, credentials, options=[("grpc.ssl_target_name_override", args.server_name)]
    )
