"""How the Python examples reach control: TLS, verified against the mesh
trust bundle that control writes (``trust_bundle_file``) or prints
(``redfire-control trust-bundle``), with an operator token
(``redfire-control token operator --subject me --role registry-admin ...``)
sent as ``authorization: Bearer`` on every call: control refuses calls
without a credential (UNAUTHENTICATED) and calls the token's roles do not
cover (PERMISSION_DENIED). Plaintext only with ``--insecure``, for a control
started with ``--dev-insecure-control`` (which checks nobody).

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
    parser.add_argument("--token-file", help="operator token (from `redfire-control token operator`)")
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
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(
        args.target, credentials, options=[("grpc.ssl_target_name_override", args.server_name)]
    )
