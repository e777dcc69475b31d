"""Provisioning a SoftHSM2 token for a CA home (``ckms ca init`` with the default module).

python-pkcs11 does not expose C_InitToken, so a fresh SoftHSM token is initialised through ctypes. This
keeps the PINs out of any command line (softhsm2-util would need them in argv)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ckms_app.errors import HsmError


class _CK_TOKEN_INFO_PAD(ctypes.Structure):  # only used as an opaque buffer
    _fields_ = [("data", ctypes.c_ubyte * 512)]


def provision_softhsm_token(
    module: str, conf_path: Path, token_dir: Path, label: str, so_pin: str, user_pin: str
) -> None:
    """Create ``conf_path`` pointing at ``token_dir`` and initialise a new token in a free slot."""
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(token_dir, 0o700)
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(
        "# SoftHSM2 configuration for this CA home (written by ckms ca init)\n"
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf_path)
    lib = ctypes.CDLL(module)
    ck_ulong = ctypes.c_ulong

    def check(rv: int, what: str) -> None:
        if rv != 0:
            raise HsmError(f"SoftHSM {what} failed with CKR 0x{rv:x}")

    check(lib.C_Initialize(None), "C_Initialize")
    try:
        count = ck_ulong(0)
        check(lib.C_GetSlotList(ctypes.c_ubyte(0), None, ctypes.byref(count)), "C_GetSlotList")
        slots = (ck_ulong * count.value)()
        check(lib.C_GetSlotList(ctypes.c_ubyte(0), slots, ctypes.byref(count)), "C_GetSlotList")
        free_slot = None
        for slot in slots[: count.value]:
            info = _CK_TOKEN_INFO_PAD()
            check(lib.C_GetTokenInfo(ck_ulong(slot), ctypes.byref(info)), "C_GetTokenInfo")
            # CK_TOKEN_INFO: label[32], manufacturerID[32], model[16], serialNumber[16], flags
            flags = int.from_bytes(bytes(info.data[96:104]), "little")
            if not flags & 0x400:  # CKF_TOKEN_INITIALIZED
                free_slot = slot
                break
        if free_slot is None:
            raise HsmError("SoftHSM has no free slot for a new token")
        so = so_pin.encode()
        padded_label = label.encode().ljust(32, b" ")[:32]
        check(
            lib.C_InitToken(
                ck_ulong(free_slot), ctypes.c_char_p(so), ck_ulong(len(so)), ctypes.c_char_p(padded_label)
            ),
            "C_InitToken",
        )
        # Set the user PIN as the security officer. SoftHSM moves the initialised token to a
        # new slot, so look it up again by label.
        session = ck_ulong(0)
        slot = _find_slot_by_label(lib, padded_label)
        rw_serial = ck_ulong(0x2 | 0x4)  # CKF_RW_SESSION | CKF_SERIAL_SESSION
        check(
            lib.C_OpenSession(ck_ulong(slot), rw_serial, None, None, ctypes.byref(session)), "C_OpenSession"
        )
        try:
            check(lib.C_Login(session, ck_ulong(0), ctypes.c_char_p(so), ck_ulong(len(so))), "C_Login(SO)")
            user = user_pin.encode()
            check(lib.C_InitPIN(session, ctypes.c_char_p(user), ck_ulong(len(user))), "C_InitPIN")
            lib.C_Logout(session)
        finally:
            lib.C_CloseSession(session)
    finally:
        lib.C_Finalize(None)


def _find_slot_by_label(lib: ctypes.CDLL, padded_label: bytes) -> int:
    ck_ulong = ctypes.c_ulong
    count = ck_ulong(0)
    lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count))
    slots = (ck_ulong * count.value)()
    lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count))
    for slot in slots[: count.value]:
        info = _CK_TOKEN_INFO_PAD()
        if (
            lib.C_GetTokenInfo(ck_ulong(slot), ctypes.byref(info)) == 0
            and bytes(info.data[:32]) == padded_label
        ):
            return int(slot)
    raise HsmError("the newly initialised token is not visible")


def reinit_token(module: str, slot_id: int, label: str, so_pin: str) -> None:
    """C_InitToken on an initialised token: the token checks the SO PIN, then erases every object.

    python-pkcs11 has no C_InitToken, so this goes through ctypes on the same module; the caller's
    python-pkcs11 handle must have no session open on the token (CKR_SESSION_EXISTS otherwise) and
    must re-initialise its view of the library afterwards.
    """
    lib = ctypes.CDLL(module)
    init_rv = lib.C_Initialize(None)
    if init_rv not in (0, 0x191):  # CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED (python-pkcs11 holds it)
        raise HsmError(f"C_Initialize failed with CKR 0x{init_rv:x}")
    try:
        so = so_pin.encode()
        padded_label = label.encode().ljust(32, b" ")[:32]
        rv = lib.C_InitToken(
            ctypes.c_ulong(slot_id),
            ctypes.c_char_p(so),
            ctypes.c_ulong(len(so)),
            ctypes.c_char_p(padded_label),
        )
        if rv == 0xA0:  # CKR_PIN_INCORRECT
            raise HsmError("the token refused the custody SO PIN for re-initialisation")
        if rv != 0:
            raise HsmError(f"C_InitToken failed with CKR 0x{rv:x}")
    finally:
        if init_rv == 0:  # only undo our own C_Initialize
            lib.C_Finalize(None)
