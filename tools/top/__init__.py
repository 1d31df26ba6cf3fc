"""``tickmesh top``: one live terminal screen for the whole mesh (``python -m tools.top``).

``model`` builds what the screen shows from bus events and query replies (no sockets, no
terminal), ``view`` renders a snapshot of it with rich, ``keys`` is the keyboard's state machine,
``app`` holds the sockets and the loop, ``__main__`` the command line.
"""
