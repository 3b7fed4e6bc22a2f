"""Security: CURVE keys, roles and the node's ZAP handler (docs/security.md).

- :mod:`.certs` -- czmq-format certificates (readable by other languages' ZeroMQ tools);
- :mod:`.keystore` -- the key directory ``miyaq keys`` manages;
- :mod:`.roles` -- which role may send which command;
- :mod:`.curve` -- CURVE options for server and client sockets;
- :mod:`.zap` -- the node's ZAP handler: which keys may connect, and who they are.
"""
