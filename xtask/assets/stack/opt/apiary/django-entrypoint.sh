#!/bin/sh
# The tutorial's Django app, stood in for: it waits for its database with
# back-off (as real apps do: Swarm ignores depends_on), then serves.
set -u
cd /opt/apiary/django
delay=1
for _ in $(seq 1 40); do
    if python3 -c 'from stackapp.db import ping; ping()' 2>/dev/null; then
        echo "database reachable"
        break
    fi
    echo "waiting for the database (${delay}s)"
    sleep "$delay"
    [ "$delay" -lt 8 ] && delay=$((delay * 2))
done
exec python3 manage.py runserver 0.0.0.0:8000 --noreload
