"""The WSGI application for gunicorn (``wsgi:app``), granian (``python -m app.serve``) and ``flask --app wsgi``."""

import gc

from app import create_app

app = create_app()

# What start-up built (modules, the app, its routes and templates) lives as long as the process. Freezing it
# keeps the collector from walking it all again: a full collection of the ~135 000 start-up objects took 140–170 ms
# of CPU on the benchmark machine, a stall for every request queued on that worker; now a collection walks only
# what requests left behind. With GUNICORN_PRELOAD=true this runs in the master, before the fork, so the
# workers' copies of these pages are not written to by the collector either.
gc.collect()
gc.freeze()
