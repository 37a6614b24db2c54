"""The in-sandbox agent: a stdlib-only program that runs inside every sandbox.

It is started as the sandbox's first process and serves newline-delimited JSON requests on
stdin/stdout (see ``main.py``). Nothing here may import the rest of agbox: the directory is
bind-mounted read-only into the sandbox and run by the image's own ``python3``.
"""
