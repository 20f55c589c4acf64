"""age: the one place that runs it. A backup is encrypted for the configured recipients as it is written
(the chat is someone else's server), and decrypted as it is restored. Recipients are checked here in
Python first, so that a typo in the configuration is named precisely; `age` itself is the final judge."""

import base64
import collections
import contextlib
import fcntl
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import RestoreError, TgbackupdError
from .formats import ENCRYPTED_SUFFIX as SUFFIX
from .pipeline import Sink
from .stopping import end

MAGIC = b"age-encryption.org/v1"
AGE = "age"
CHUNK_BYTES = 1024 * 1024
PIPE_BYTES = 1024 * 1024
STDERR_TAIL_LINES = 10
# The start of a stream fed to `age -d` to learn whether an identity opens it, before anything is
# restored: the header (one stanza per recipient, a few hundred bytes each) and the first payload chunk.
PROBE_BYTES = 256 * 1024
_NO_MATCH = "no identity matched any of the recipients"
_READING_IDENTITY = 'reading "'  # how age starts what it says about an identity file it cannot use
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")


class EncryptionError(TgbackupdError):
    """`age` could not be run, or did not encrypt the backup."""

    exit_code = os.EX_UNAVAILABLE


class IdentityNeeded(TgbackupdError):
    """The backup is encrypted and no identity was given to decrypt it."""

    exit_code = os.EX_USAGE


class WrongIdentity(RestoreError):
    """None of the identities given opens the backup."""


# Recipients, checked without age


def _bech32_polymod(values: list[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit in range(5):
            checksum ^= generator[bit] if (top >> bit) & 1 else 0
    return checksum


def _x25519_problem(text: str) -> str | None:
    """What is wrong with an `age1…` recipient (BIP 173 bech32, human-readable part `age`, 32 bytes)."""
    if text != text.lower():
        return "an age recipient is written in lower case"
    data = text[len("age1") :]
    if len(data) < 6 or any(character not in _BECH32 for character in data):
        return f"an age1 recipient holds only the letters and digits of bech32 ({_BECH32})"
    values = [_BECH32.index(character) for character in data]
    human = [ord(character) >> 5 for character in "age"] + [0] + [ord(character) & 31 for character in "age"]
    if _bech32_polymod(human + values) != 1:
        return "its checksum does not match: a character is wrong or missing (copy it again: age-keygen -y)"
    bits = "".join(f"{value:05b}" for value in values[:-6])
    if len(bits) // 8 != 32 or "1" in bits[256:]:
        return f"it holds {len(bits) // 8} bytes, not the 32 of an X25519 public key"
    return None


def _ssh_problem(kind: str, fields: list[str]) -> str | None:
    """What is wrong with an `ssh-ed25519 AAAA… [comment]` or `ssh-rsa AAAA… [comment]` line."""
    if len(fields) < 2:
        return f"{kind} is followed by the key itself (AAAA…), as in the .pub file"
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        return "the key after the type is not base64: copy the whole line of the .pub file"
    length = int.from_bytes(blob[:4], "big")
    embedded = blob[4 : 4 + length]
    if len(blob) < 4 + length or embedded != kind.encode():
        return f"the key does not say it is an {kind} key: copy the whole line of the .pub file"
    if kind == "ssh-ed25519" and len(blob) != 4 + length + 4 + 32:
        return "the key is not the 32 bytes of an Ed25519 public key"
    return None


def recipient_problem(text: str) -> str | None:
    """Given one recipient as a person wrote it, return what is wrong with it, or None if age can take it."""
    fields = text.split()
    if text.startswith("age1"):
        problem = _x25519_problem(text)
    elif fields and fields[0] in _SSH_TYPES:
        problem = _ssh_problem(fields[0], fields)
    else:
        return (
            "not an age recipient: expected an age public key (age1…, from age-keygen -y key.txt) or an SSH "
            "public key line (ssh-ed25519 AAAA… or ssh-rsa AAAA…)"
        )
    return None if problem is None else f"not an age recipient: {problem}"


def recipients_file_entries(text: str) -> list[tuple[int, str]]:
    """The recipients in the text of an age recipients file, with their line numbers: one a line, blank
    lines and lines starting with # left out (as `age -R` reads it)."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


# Running age


class _Age:
    """One `age` process with its standard input and output piped; a thread keeps the tail of what it
    says on its standard error."""

    def __init__(self, arguments: Sequence[str], doing: str, error: type[TgbackupdError]) -> None:
        self._doing = doing  # "encrypted", "decrypted": what the backup cannot be when age fails
        self._error = error
        try:
            # Its own session: a Ctrl-C meant for tgbackupctl is not one for age.
            self.process = subprocess.Popen(
                (AGE, *arguments),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise error(f"age was not found, so the backup cannot be {doing}: apt-get install age") from None
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout.fileno()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # best effort, as for pg_dump's pipe
                fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr = threading.Thread(target=self._read_stderr, name="age-stderr", daemon=True)
        self._stderr.start()
        self._threads: list[threading.Thread] = []
        self.failure: BaseException | None = None  # what went wrong in a thread (the sink, the source)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            text = line.decode("utf-8", "replace").strip().removeprefix("age: ").removeprefix("error: ")
            if text and not text.startswith("report unexpected"):
                self._tail.append(text)

    def in_thread(self, work: Callable[[], None], name: str) -> None:
        """Run `work` beside the caller; what it raises ends age and is kept in `failure`."""

        def run() -> None:
            try:
                work()
            except BaseException as error:  # raised again on the caller's thread, by finish
                self.failure = error
                self.end()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def said(self) -> str:
        return "; ".join(self._tail) or "it printed nothing"

    def finish(self) -> None:
        """Wait for age and the threads; raise what a thread raised, else the error if age failed."""
        returncode = self.process.wait()
        for thread in self._threads:
            thread.join()
        self._stderr.join()
        self.process.stdout.close()  # type: ignore[union-attr]
        self.process.stderr.close()  # type: ignore[union-attr]
        if self.failure is not None:
            raise self.failure
        if returncode != 0:
            raise self._error(f"the backup could not be {self._doing}: age says {self.said()}")

    def end(self) -> None:
        """Stop age now, whatever it is doing (SIGTERM, then SIGKILL if it lingers), and reap it."""
        end(self.process, group=False)


class AgeEncryptor:
    """A stage of the backup's pipeline: what is written goes into `age -e` for the recipients, and a
    thread copies what age writes to `downstream` in chunks. The pipes are bounded, so memory stays flat,
    and the plain text is never on disk. `abort` ends age when the backup fails before `close`."""

    def __init__(self, recipients: Sequence[str], downstream: Sink) -> None:
        self._age = _Age(encrypt_arguments(recipients), "encrypted", EncryptionError)
        self._downstream = downstream
        self._closed = False
        self._age.in_thread(self._copy_out, "age-out")

    def _copy_out(self) -> None:
        while block := os.read(self._age.stdout, CHUNK_BYTES):
            self._downstream.write(block)

    def write(self, data: bytes) -> None:
        try:
            self._age.stdin.write(data)
        except BrokenPipeError:  # age is gone: say why
            self._close_input()
            self._age.finish()
            raise EncryptionError(f"age ended before the backup was encrypted: {self._age.said()}") from None

    def _close_input(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._age.stdin.close()

    def close(self) -> None:
        self._closed = True
        self._close_input()
        self._age.finish()
        self._downstream.close()

    def abort(self) -> None:
        """End age if the backup stopped before `close` (a failed dump); nothing once closed."""
        if not self._closed:
            self._closed = True
            self._age.end()
            with contextlib.suppress(BaseException):
                self._close_input()
                self._age.finish()


def encrypt_arguments(recipients: Sequence[str]) -> tuple[str, ...]:
    """age's arguments to encrypt standard input to standard output for every one of `recipients`."""
    return ("--encrypt", *(argument for recipient in recipients for argument in ("-r", recipient)))


def decrypt_arguments(identities: Sequence[Path]) -> tuple[str, ...]:
    return ("--decrypt", *(argument for identity in identities for argument in ("-i", str(identity))))


def is_encrypted(name: str, head: bytes) -> bool:
    """Whether a backup is encrypted: its name ends in .age (a manifest's name says so), else its first
    bytes are age's."""
    return name.endswith(SUFFIX) or head.startswith(MAGIC)


def check_identities(head: bytes, whole: bool, identities: Sequence[Path], recipients: Sequence[str]) -> None:
    """Given the first bytes of an encrypted backup (`whole` when they are all of it), make sure one of
    the identities opens it, before anything is restored: age printed plain text (all of it, without an
    error, when `whole`), which it does only once an identity opened the header. Raise IdentityNeeded when
    none was given or age cannot use a file given (a public key, a damaged or empty key file),
    WrongIdentity when none matches (naming the `recipients` the manifest lists), RestoreError when the
    stream is damaged."""
    encrypted_for = f" for {', '.join(recipients)}" if recipients else ""
    if not identities:
        raise IdentityNeeded(
            f"this backup is encrypted{encrypted_for}; pass --identity FILE (the age identity, made with "
            "age-keygen, whose public key is one of those)"
        )
    for identity in identities:
        if not os.access(identity, os.R_OK) or not identity.is_file():
            raise IdentityNeeded(f"the identity file {identity} does not exist or cannot be read")
    age = _Age(decrypt_arguments(identities), "decrypted", RestoreError)
    printed = 0

    def drain() -> None:
        nonlocal printed
        while block := os.read(age.stdout, CHUNK_BYTES):
            printed += len(block)

    age.in_thread(drain, "age-out")
    with contextlib.suppress(BrokenPipeError):
        age.stdin.write(head)
        age.stdin.close()
    try:
        age.finish()
    except RestoreError:
        if printed and not whole:
            return  # the identity opened the header; the probe was cut inside the payload, checked as read
        said = age.said()
        if said.startswith(_READING_IDENTITY):  # age could not use an identity file: it names it
            raise IdentityNeeded(
                f"age cannot use the identity given: {said}. Pass an age identity (age-keygen's key.txt, "
                "not its public key, or an SSH private key). Nothing was restored"
            ) from None
        if _NO_MATCH in said:
            given = ", ".join(str(identity) for identity in identities)
            raise WrongIdentity(
                f"none of the identities given ({given}) can decrypt this backup: it is encrypted"
                f"{encrypted_for or ' for other keys'}. Pass the identity of one of those. Nothing was "
                "restored"
            ) from None
        raise RestoreError(f"the backup's age encryption is damaged: {said}. Nothing was restored") from None


def decrypt(chunks: Iterator[bytes], identities: Sequence[Path]) -> Iterator[bytes]:
    """The plain bytes of an age-encrypted stream, decrypted by `age -d` as they are read: a thread feeds
    it `chunks`. Raise what reading `chunks` raised, else RestoreError if age fails (a damaged or cut
    stream: age authenticates every 64 KiB and the end)."""
    age = _Age(decrypt_arguments(identities), "decrypted", RestoreError)

    def feed() -> None:
        try:
            for chunk in chunks:
                age.stdin.write(chunk)
        except BrokenPipeError:
            pass  # age stopped at a problem, which it says
        finally:
            with contextlib.suppress(BrokenPipeError):
                age.stdin.close()

    age.in_thread(feed, "age-in")
    finished = False
    try:
        while block := os.read(age.stdout, CHUNK_BYTES):
            yield block
        finished = True
    finally:
        if not finished:
            age.end()
    age.finish()


class _Collected:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        pass


def round_trip(recipients: Sequence[str], identity: Path | None) -> str:
    """Encrypt a few bytes for the recipients as a backup would, and decrypt them with `identity` when
    one is given, for `tgbackupd --check`. Return what worked; raise TgbackupdError saying what did not."""
    sample = b"tgbackupd --check\n"
    collected = _Collected()
    stage = AgeEncryptor(recipients, collected)
    stage.write(sample)
    stage.close()
    if identity is None:
        return f"age encrypts for {len(recipients)} recipient(s)"
    try:
        decrypted = b"".join(decrypt(iter(collected.chunks), (identity,)))
    except RestoreError as error:
        raise EncryptionError(f"the identity {identity} cannot decrypt what age encrypts: {error}") from None
    if decrypted != sample:
        raise EncryptionError(f"the identity {identity} gave back other bytes than were encrypted")
    return f"age encrypts for {len(recipients)} recipient(s); the identity {identity} decrypts"
