"""Who is at the other end of a connected Unix socket: SO_PEERCRED (Linux) or LOCAL_PEERCRED (macOS)."""

from __future__ import annotations

import socket
import struct
from typing import Final

#: Linux `struct ucred`: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")
#: macOS getsockopt level and option: SOL_LOCAL, LOCAL_PEERCRED (socket.h lacks both names).
_SOL_LOCAL: Final = 0
_LOCAL_PEERCRED: Final = 0x001
#: macOS `struct xucred`: u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16].
_XUCRED_HEAD: Final = struct.Struct("=2I")
_XUCRED_SIZE: Final = 76
_XUCRED_VERSION: Final = 0


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process that connected `sock`, or None when the OS will not say (then the
    connection must be refused: nobody can be trusted whom we cannot name)."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    try:
        if so_peercred is not None:
            _pid, linux_uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size))
            return int(linux_uid)
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED_SIZE)
    except (OSError, struct.error):
        return None
    if len(raw) < _XUCRED_HEAD.size:
        return None
    version, uid = _XUCRED_HEAD.unpack_from(raw)
    return int(uid) if version == _XUCRED_VERSION else None
