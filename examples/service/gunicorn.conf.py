# gunicorn.conf.py: each worker closes its sender as it stops (a deploy's SIGTERM).
def worker_exit(server, worker):
    from wsgi_app import sender

    sender.close(timeout=10)
