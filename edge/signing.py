"""Ed25519 signatures on model bundles (the ``cryptography`` package).

The engineer signs a bundle with a private key kept off the tills (``agegate-export sign``);
each till holds the public key (AGEGATE_MODEL_PUBLIC_KEY) and refuses bundles that are not
signed by it. The signature covers ``manifest.json`` byte for byte, and the manifest holds the
sha256 of every other file in the bundle (model, golden faces), so one signature covers all.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .bundle import MANIFEST_FILE, SIGNATURE_FILE, Bundle, BundleError


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair as PEM; the private key file is readable by its owner only."""
    if private_path.exists():
        raise FileExistsError(f"{private_path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def sign_bundle(bundle_dir: Path, private_key: Ed25519PrivateKey) -> Path:
    """Write ``signature.ed25519`` beside the manifest it signs."""
    manifest = (Path(bundle_dir) / MANIFEST_FILE).read_bytes()
    target = Path(bundle_dir) / SIGNATURE_FILE
    target.write_bytes(private_key.sign(manifest))
    return target


def verify_signature(bundle: Bundle, public_key: Ed25519PublicKey) -> None:
    """Raise BundleError unless the bundle carries a valid signature by ``public_key``."""
    sig_path = bundle.path / SIGNATURE_FILE
    try:
        signature = sig_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{bundle.path}: unsigned ({SIGNATURE_FILE} missing) and this till requires signatures") from None
    try:
        public_key.verify(signature, bundle.manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{bundle.path}: signature does not match this till's public key") from None
