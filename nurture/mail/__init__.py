"""Mail: rendering templates, composing MIME, sending over SMTP, reading inbound mail."""
