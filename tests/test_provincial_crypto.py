"""SM4 against the published test vectors, the password PIN block, and the province profiles and config section."""

from __future__ import annotations

import pytest

from energymon.errors import ConfigError
from energymon.gateway.provincial.crypto import (
    CryptoError,
    decode_text,
    encrypt_password,
    sm4_cbc_decrypt,
    sm4_cbc_encrypt,
    sm4_ecb_block,
)
from energymon.gateway.provincial.profile import CryptoProfile, available_profiles, load_profile
from energymon.provincial_config import DataItem, ProvincialConfig

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def test_gbt_32907_appendix_a_example_1() -> None:
    """GB/T 32907-2016 Appendix A, example 1: key = plaintext, one block."""
    cipher = sm4_ecb_block(KEY, KEY)
    assert cipher.hex() == "681edf34d206965e86b3e94f536e4246"
    assert sm4_ecb_block(KEY, cipher, decrypt=True) == KEY


def test_cbc_vector_from_the_sm4_internet_draft() -> None:
    """draft-ribose-cfrg-sm4 CBC example 1 (two-block IV chaining, no padding)."""
    iv = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    plain = bytes.fromhex("aaaaaaaabbbbbbbbccccccccddddddddeeeeeeeeffffffffaaaaaaaabbbbbbbb")
    cipher = sm4_cbc_encrypt(KEY, iv, plain, padding="none")
    assert cipher.hex() == "78ebb11cc40b0a48312aaeb2040244cb4cb7016951909226979b0d15dc6a8f6d"
    assert sm4_cbc_decrypt(KEY, iv, cipher, padding="none") == plain
    padded = sm4_cbc_encrypt(KEY, iv, plain)  # PKCS#7 adds a whole block; the first blocks are unchanged
    assert padded[:32] == cipher and len(padded) == 48
    assert sm4_cbc_decrypt(KEY, iv, padded) == plain


@pytest.mark.parametrize("padding", ["pkcs7", "zero"])
def test_round_trip_of_odd_lengths(padding: str) -> None:
    iv = b"91530102MA6K7LQ8"
    for n in (1, 15, 16, 17, 100):
        text = bytes(range(1, n + 1))
        assert sm4_cbc_decrypt(KEY, iv, sm4_cbc_encrypt(KEY, iv, text, padding), padding) == text


def test_wrong_key_is_reported_not_garbled() -> None:
    iv = b"\x00" * 16
    cipher = sm4_cbc_encrypt(KEY, iv, b"password")
    with pytest.raises(CryptoError, match="padding"):
        sm4_cbc_decrypt(bytes(16), iv, cipher)
    with pytest.raises(CryptoError, match="16 bytes"):
        sm4_ecb_block(b"short", KEY)


def test_password_pin_block_uses_the_working_key_and_the_uscc_iv() -> None:
    profile = CryptoProfile()
    uscc = "91530102MA6K7LQ8RH"
    secret = "0123456789ABCDEFFEDCBA9876543210"
    text = encrypt_password("Pa55word", secret, uscc, profile)
    assert len(text) == 32 and text == text.upper()
    # the first block decrypts, with the USCC's first 16 characters as IV, to the padded password
    block = decode_text(text, profile)
    plain = sm4_cbc_decrypt(KEY, uscc[:16].encode(), block)
    assert plain == b"Pa55word"
    assert encrypt_password("Pa55word", secret, "91530102MA6K7LQ9XX", profile) != text  # IV from the USCC


def test_shipped_profiles_load_and_name_what_is_unverified() -> None:
    assert {"yunnan", "sichuan", "jiangxi"} <= set(available_profiles())
    yn = load_profile("yunnan")
    assert yn.endpoints.working_key == "enterpriseInfo/rwk"
    assert yn.dictionary("energy_type").code_length == 4
    assert "endpoints.data_upload" in yn.unverified()
    assert yn.provenance["endpoints.access_token"].confidence == "V-code"
    with pytest.raises(ConfigError, match="unknown province profile 'atlantis'"):
        load_profile("atlantis")


def test_config_rejects_what_the_platform_cannot_take() -> None:
    code = {"energy_class": "01", "energy_type": "电力", "usage": "80"}
    with pytest.raises(ValueError, match="carrier item has day and month values only"):
        DataItem.model_validate({"id": "elec", "name": "电力", "source": {"kind": "carrier", "carrier": "electricity"},
                                 "code": code, "stat_types": [0, 1], "max_value": 10})
    with pytest.raises(ValueError, match=r"password\n  Extra inputs are not permitted"):
        ProvincialConfig.model_validate({"profile": "yunnan", "device_id": "d", "password": "secret",
                                         "registration": {}, "items": []})


def test_sample_configuration_in_the_docs_validates_and_resolves() -> None:
    """The sample in docs/provincial.md is a valid section whose dataCodes resolve against the simulator's
    dictionaries."""
    import re
    from pathlib import Path

    import yaml

    from energymon.gateway.provincial.items import resolve_items
    from energymon.simulators.provincial_platform import DEFAULT_DICTIONARIES

    text = (Path(__file__).resolve().parents[1] / "docs" / "provincial.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(provincial:.*?)```", text, re.S)
    assert block is not None
    cfg = ProvincialConfig.model_validate(yaml.safe_load(block.group(1))["provincial"])
    items = resolve_items(cfg, load_profile(cfg.profile), DEFAULT_DICTIONARIES)
    assert items[0].data_code == "00-00-0000023400-80"
