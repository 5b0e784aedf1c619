"""Helpers shared by the tests, one concern per module: ``paths``, ``clock``, ``smtp``,
``mail`` (reading and answering caught emails), ``settings``, ``web`` (the app under uvicorn),
``net`` (ports and waiting), ``db`` (reading rows as they are stored), ``world`` (the
integration tests' world), ``daemon`` (``nurture run`` as a subprocess), ``dovecot`` and
``imap`` (IMAP servers)."""
