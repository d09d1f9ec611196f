"""E-mail notifications: a multipart message (plain text and HTML) built with
:class:`email.message.EmailMessage`, sent over SMTP with STARTTLS and AUTH as configured.

Nothing a user wrote reaches a header but the recipient's address, and that only after it parsed as
exactly one plain ``local@domain`` address with no control characters; the subject is our own text.
The job's name and message appear only in the bodies (HTML-escaped in the HTML one). The
``Message-ID`` is derived from the job and the phase, so a retry after a lost answer can be recognised
by the receiving side.
"""

from __future__ import annotations

import html
import re
import smtplib
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

from sharpml.contract import Phase
from sharpml_operator.notice import Notice

_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
)
SUBJECTS = {
    Phase.COMPLETE: "Your SharpML scene is ready",
    Phase.FAILED: "Your SharpML job failed",
    Phase.CANCELLED: "Your SharpML job was cancelled",
}


class MailError(Exception):
    """One attempt failed; ``final``: retrying cannot help (a refused address, a rejected login)."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    starttls: bool
    username: str
    password: str = field(repr=False)
    sender: str
    timeout: float


def recipient(raw: str) -> Address:
    """``raw`` as one plain address, or :class:`MailError` (final) naming the rule."""
    if not _ADDRESS.fullmatch(raw) or ".." in raw:
        raise MailError(f"spec.notify.email: {raw[:80]!r} is not a plain e-mail address", final=True)
    local, _, domain = raw.partition("@")
    return Address(username=local, domain=domain)


def build(notice: Notice, sender: str, to: str, message_id: str) -> EmailMessage:
    """The message announcing ``notice`` to ``to``."""
    msg = EmailMessage()
    msg["Subject"] = SUBJECTS[notice.phase]
    msg["From"] = sender
    msg["To"] = recipient(to)
    msg["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2].strip("> ") or "sharpml"
    msg["Message-ID"] = f"<{message_id}@{domain}>"
    outcome = {
        Phase.COMPLETE: "is ready",
        Phase.FAILED: "failed",
        Phase.CANCELLED: "was cancelled",
    }[notice.phase]
    lines = [f"Your SharpML job {notice.job_id} {outcome}.", ""]
    if notice.phase is not Phase.COMPLETE:
        lines += [f"{notice.reason}: {notice.message}", ""]
    if notice.view_url:
        lines += ["View it in your browser:", notice.view_url, ""]
        lines += [f"{name}: {url}" for name, url in notice.artifact_urls.items()]
    msg.set_content("\n".join(lines).rstrip() + "\n")
    esc = html.escape
    parts = [f"<p>Your SharpML job <b>{esc(notice.job_id)}</b> {outcome}.</p>"]
    if notice.phase is not Phase.COMPLETE:
        parts.append(f"<p>{esc(notice.reason)}: {esc(notice.message)}</p>")
    if notice.view_url:
        parts.append(f'<p><a href="{esc(notice.view_url)}">View it in your browser</a></p>')
        items = "".join(f'<li><a href="{esc(u)}">{esc(n)}</a></li>' for n, u in notice.artifact_urls.items())
        if items:
            parts.append(f"<ul>{items}</ul>")
    msg.add_alternative("<!doctype html><html><body>" + "".join(parts) + "</body></html>\n", subtype="html")
    return msg


def send(msg: EmailMessage, settings: SmtpSettings, context: ssl.SSLContext | None = None) -> None:
    """Deliver ``msg`` to the SMTP server once; :class:`MailError` when it did not take it. Blocking."""
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
            smtp.ehlo()
            if settings.starttls:
                smtp.starttls(context=context or ssl.create_default_context())
                smtp.ehlo()
            if settings.username:
                smtp.login(settings.username, settings.password)
            smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailError(f"recipient refused: {exc.recipients}", final=True) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(f"SMTP login refused: {exc.smtp_code} {exc.smtp_error!r}", final=True) from None
    except smtplib.SMTPResponseException as exc:
        final = 500 <= exc.smtp_code < 600
        raise MailError(f"SMTP {exc.smtp_code} {exc.smtp_error!r}", final=final) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"{type(exc).__name__}: {exc}") from None
