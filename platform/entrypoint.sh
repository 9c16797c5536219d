#!/usr/bin/env bash
# One image, several roles: web, worker-cpu, worker-gpu, flower.
set -euo pipefail
cd /app
role="${1:-web}"
shift || true

case "$role" in
  web)
    python manage.py migrate --noinput
    python manage.py collectstatic --noinput
    exec gunicorn config.wsgi --config platform/gunicorn.conf.py "$@"
    ;;
  worker-cpu)
    exec celery -A config worker -Q cpu --concurrency "${CPU_WORKER_CONCURRENCY:-4}" \
      --hostname "cpu@%h" --beat --schedule /data/celerybeat-schedule --loglevel INFO "$@"
    ;;
  worker-gpu)
    # One process per GPU, concurrency 1: a training run owns its GPU. The solo pool runs the
    # task in the worker's main (non-daemonic) process, so it may start DataLoader workers.
    exec celery -A config worker -Q gpu --pool solo --concurrency 1 \
      --hostname "gpu${CUDA_VISIBLE_DEVICES:-0}@%h" --loglevel INFO "$@"
    ;;
  flower)
    exec celery -A config flower --port=5555 "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
