"""SM4 (GB/T 32907-2016) in CBC mode through gmssl, with the padding and text encoding a province profile names.

The block cipher is gmssl's :class:`gmssl.sm4.CryptSM4` (ECB on single blocks, no padding); this module only
chains the blocks (CBC), pads and encodes, so every padding and output variant of the profiles is possible.
"""

from __future__ import annotations

import base64
import binascii

from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4

from energymon.errors import DataError
from energymon.gateway.provincial.profile import CryptoProfile

__all__ = [
    "BLOCK",
    "CryptoError",
    "decode_text",
    "encode_text",
    "encrypt_password",
    "iv_bytes",
    "key_bytes",
    "sm4_cbc_decrypt",
    "sm4_cbc_encrypt",
    "sm4_ecb_block",
]

BLOCK = 16


class CryptoError(DataError):
    """A key, IV or ciphertext does not fit SM4 or the profile's encoding."""


def _cipher(key: bytes, mode: int) -> CryptSM4:
    if len(key) != BLOCK:
        raise CryptoError(f"SM4 key must be 16 bytes, got {len(key)}")
    cipher = CryptSM4(mode=mode, padding_mode=None)
    cipher.set_key(key, mode)
    return cipher


def sm4_ecb_block(key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    """Encrypt (or decrypt) one 16-byte block with SM4."""
    if len(block) != BLOCK:
        raise CryptoError(f"an SM4 block is 16 bytes, got {len(block)}")
    out: bytes = _cipher(key, SM4_DECRYPT if decrypt else SM4_ENCRYPT).crypt_ecb(block)
    return out


def _pad(data: bytes, padding: str) -> bytes:
    if padding == "pkcs7":
        n = BLOCK - len(data) % BLOCK
        return data + bytes([n]) * n
    if padding == "zero":
        return data + b"\x00" * (-len(data) % BLOCK)
    if len(data) % BLOCK:
        raise CryptoError(f"padding 'none' needs a multiple of 16 bytes, got {len(data)}")
    return data


def _unpad(data: bytes, padding: str) -> bytes:
    if padding == "pkcs7":
        n = data[-1] if data else 0
        if not 1 <= n <= BLOCK or data[-n:] != bytes([n]) * n:
            raise CryptoError("bad PKCS#7 padding (wrong key or IV?)")
        return data[:-n]
    if padding == "zero":
        return data.rstrip(b"\x00")
    return data


def sm4_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes, padding: str = "pkcs7") -> bytes:
    """SM4-CBC encryption with ``pkcs7``, ``zero`` or no (``none``) padding."""
    if len(iv) != BLOCK:
        raise CryptoError(f"CBC IV must be 16 bytes, got {len(iv)}")
    cipher = _cipher(key, SM4_ENCRYPT)
    data = _pad(plaintext, padding)
    out = bytearray()
    prev = iv
    for i in range(0, len(data), BLOCK):
        block = bytes(a ^ b for a, b in zip(data[i : i + BLOCK], prev, strict=True))
        prev = cipher.crypt_ecb(block)
        out += prev
    return bytes(out)


def sm4_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes, padding: str = "pkcs7") -> bytes:
    """SM4-CBC decryption; the padding is checked and removed."""
    if len(iv) != BLOCK:
        raise CryptoError(f"CBC IV must be 16 bytes, got {len(iv)}")
    if not ciphertext or len(ciphertext) % BLOCK:
        raise CryptoError(f"ciphertext length {len(ciphertext)} is not a positive multiple of 16")
    cipher = _cipher(key, SM4_DECRYPT)
    out = bytearray()
    prev = iv
    for i in range(0, len(ciphertext), BLOCK):
        block = ciphertext[i : i + BLOCK]
        out += bytes(a ^ b for a, b in zip(cipher.crypt_ecb(block), prev, strict=True))
        prev = block
    return _unpad(bytes(out), padding)


def key_bytes(secret_key: str, profile: CryptoProfile) -> bytes:
    """The 16 key bytes of a working key (``secretKey``) as the profile reads it."""
    if profile.key_encoding == "hex":
        try:
            key = bytes.fromhex(secret_key)
        except ValueError:
            raise CryptoError(f"working key {secret_key[:4]}…: not hex") from None
    else:
        key = secret_key[:BLOCK].encode("ascii", errors="strict")
    if len(key) != BLOCK:
        raise CryptoError(f"working key gives {len(key)} bytes, SM4 needs 16")
    return key


def iv_bytes(uscc: str, profile: CryptoProfile) -> bytes:
    """The CBC IV: the first 16 characters of the 统一社会信用代码, or zeros."""
    if profile.iv_source == "zero":
        return b"\x00" * BLOCK
    if len(uscc) < BLOCK:
        raise CryptoError(f"USCC {uscc!r} is shorter than 16 characters")
    return uscc[:BLOCK].encode("ascii")


def encode_text(data: bytes, profile: CryptoProfile) -> str:
    """Ciphertext as text (hex upper/lower or base64)."""
    if profile.output == "base64":
        return base64.b64encode(data).decode("ascii")
    text = data.hex()
    return text.upper() if profile.output == "hex_upper" else text


def decode_text(text: str, profile: CryptoProfile) -> bytes:
    """Ciphertext from its text form."""
    try:
        if profile.output == "base64":
            return base64.b64decode(text, validate=True)
        return bytes.fromhex(text)
    except (ValueError, binascii.Error):
        raise CryptoError(f"ciphertext is not {profile.output}") from None


def encrypt_password(password: str, secret_key: str, uscc: str, profile: CryptoProfile) -> str:
    """The password PIN block sent at registration and with every access-token request.

    SM4-CBC with the working key, IV from the USCC, padded and encoded as the profile says, cut to
    ``password_hex_chars`` characters when the profile truncates.
    """
    cipher = sm4_cbc_encrypt(key_bytes(secret_key, profile), iv_bytes(uscc, profile), password.encode("utf-8"),
                             profile.padding)
    text = encode_text(cipher, profile)
    if profile.password_hex_chars is not None and profile.output != "base64":
        text = text[: profile.password_hex_chars]
    return text
