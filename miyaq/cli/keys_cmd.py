"""``miyaq keys``: make, list and revoke CURVE keys (docs/security.md)."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..security.keystore import KeyStore
from ..security.roles import ROLE_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make, list and revoke CURVE keys", description=(
        "Manage a key directory: the cluster's key pair (node.key, node.key_secret), the "
        "authorized public keys with their roles (authorized/), and the key pairs handed "
        "to clients, workers and operators. Nodes read it with --keys DIR."))
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    init = actions.add_parser("init", help="make the cluster's key pair and authorized/")
    init.add_argument("dir", help="key directory (created; must not hold a cluster key yet)")
    init.set_defaults(run=_init)
    add = actions.add_parser("add", help="make a key pair for a client, worker, operator or peer")
    add.add_argument("dir", help="key directory made by `miyaq keys init`")
    add.add_argument("name", help="the key's name (letters, digits, '.', '_', '-')")
    add.add_argument("--role", required=True,
                     help=f"one of {', '.join(ROLE_NAMES)} (operator = admin)")
    add.set_defaults(run=_add)
    ls = actions.add_parser("list", help="list authorized and revoked keys")
    ls.add_argument("dir", help="key directory")
    ls.set_defaults(run=_list)
    revoke = actions.add_parser("revoke", help="take a key out of authorized/ (running nodes "
                                "refuse it within seconds, or at once on SIGHUP)")
    revoke.add_argument("dir", help="key directory")
    revoke.add_argument("name", help="the key's name")
    revoke.set_defaults(run=_revoke)


def _store(args: argparse.Namespace) -> KeyStore:
    """The key directory the command was given, named as given in errors."""
    return KeyStore(args.dir, given=f"key directory {args.dir}")


def _init(args: argparse.Namespace) -> int:
    public = _store(args).init()
    print(f"cluster key: {public} (public) and its .key_secret; authorized keys go in {args.dir}/authorized/")
    return 0


def _add(args: argparse.Namespace) -> int:
    store = _store(args)
    _, secret = store.add(args.name, args.role)
    try:
        role = next((k.role for k in store.list() if k.name == args.name), None)
    except ConfigError as err:
        raise ConfigError(f"{args.name}: made {secret}, but a node could not load {store.authorized_dir} as it "
                          f"is: {err.message}") from None
    if role is None:
        raise ConfigError(f"{args.name}: made {secret}, but no key a node loads from {store.authorized_dir} is "
                          f"named {args.name!r} (see `miyaq keys list {args.dir}`)")
    print(f"{args.name}: {secret} (hand it to its owner with {args.dir}/node.key); authorized as {role}")
    return 0


def _list(args: argparse.Namespace) -> int:
    keys = _store(args).list()
    for info in keys:
        state = "revoked" if info.revoked else "authorized"
        print(f"{info.name:<24} {info.role:<9} {state:<10} {info.public}")
    print(f"{sum(not k.revoked for k in keys)} authorized, {sum(k.revoked for k in keys)} revoked")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    """Revoke, then load ``authorized/`` as a node would: if it does not load,
    the nodes keep the keys they hold -- the revoked one too -- so say so and
    exit 2 (before 2026-12-05 this reported success)."""
    store = _store(args)
    copies = store.revoke(args.name)
    try:
        store.authorized()
    except ConfigError as err:
        raise ConfigError(f"{args.name}: moved to {args.dir}/revoked/, but a node cannot load "
                          f"{store.authorized_dir} as it is: {err.message}. Running nodes keep the keys they "
                          f"loaded, {args.name}'s included, until that is fixed (then they reload within "
                          "seconds, or at once on SIGHUP)") from None
    print(f"{args.name}: revoked (moved to {args.dir}/revoked/)")
    for other in copies:
        print(f"{other}: revoked too (authorized/{other}.key held the same public key)")
    return 0
