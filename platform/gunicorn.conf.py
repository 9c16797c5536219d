# gunicorn settings for the web container (tile serving is I/O bound: threads help).
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", str(min(4, multiprocessing.cpu_count()))))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
# Chunked slide uploads can take a while per chunk on slow links.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
accesslog = "-"
