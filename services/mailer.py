"""Sending e-mail: the port the notification worker speaks to, and its two adapters,
SMTP (``aiosmtplib``) and "off" (no server configured: nothing leaves the machine).

``DESKBILL_SMTP_URL`` names the server: ``smtp://[user:password@]host[:port]``
(STARTTLS when the server offers it; ``?starttls=false`` never, ``?starttls=true``
always) or ``smtps://…`` for TLS from the first byte (port 465 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from services.errors import ValidationError

_WIRE = policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class OutgoingMail:
    sender: str
    sender_name: str
    reply_to: str | None
    to: str
    subject: str
    text: str
    html: str
    # Stable per notification, so a message sent twice after a crash reads as one.
    message_id: str
    date: datetime

    def message(self) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = formataddr((self.sender_name, self.sender))
        msg["To"] = self.to
        if self.reply_to:
            msg["Reply-To"] = self.reply_to
        msg["Subject"] = self.subject
        msg["Message-ID"] = self.message_id
        msg["Date"] = format_datetime(self.date)
        msg.set_content(self.text)
        msg.add_alternative(self.html, subtype="html")
        return msg

    def as_bytes(self) -> bytes:
        """The message as sent. Headers are folded at 998 characters (RFC 5322's
        limit) rather than 78: the standard library folds a long subject right after
        "Subject:", which readers then show with a leading space."""
        return self.message().as_bytes(policy=_WIRE)


class MailDeliveryError(Exception):
    """The server refused or could not be reached; the message says which."""


class Mailer(Protocol):
    @property
    def enabled(self) -> bool: ...

    async def send(self, mail: OutgoingMail) -> None: ...


class OffMailer:
    """No SMTP server: notifications are recorded (status NOT_SENT), never sent."""

    enabled = False

    async def send(self, mail: OutgoingMail) -> None:
        raise MailDeliveryError("No SMTP server is configured (DESKBILL_SMTP_URL is unset).")


@dataclass(frozen=True)
class SmtpMailer:
    hostname: str
    port: int
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool | None = None
    timeout: float = 30.0

    enabled = True

    async def send(self, mail: OutgoingMail) -> None:
        try:
            await aiosmtplib.send(
                mail.as_bytes(),
                sender=mail.sender,
                recipients=[mail.to],
                hostname=self.hostname,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.use_tls,
                start_tls=self.start_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPException as exc:
            raise MailDeliveryError(f"The SMTP server refused the message: {exc}") from None
        except OSError as exc:
            raise MailDeliveryError(
                f"The SMTP server {self.hostname}:{self.port} could not be reached: {exc}"
            ) from None


def mailer_from_url(url: str | None, *, timeout: float = 10.0) -> Mailer:
    """SMTP when ``url`` is set, otherwise off; a URL we cannot use is a VALIDATION error."""
    if not url:
        return OffMailer()
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValidationError(
            "DESKBILL_SMTP_URL must look like smtp://user:password@host:587 or smtps://host:465."
        )
    query = parse_qs(parts.query)
    starttls = (query.get("starttls") or [""])[0].lower()
    implicit = parts.scheme == "smtps"
    return SmtpMailer(
        hostname=parts.hostname,
        port=parts.port or (465 if implicit else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit,
        start_tls=None if implicit or not starttls else starttls in ("1", "true", "yes"),
        timeout=timeout,
    )
