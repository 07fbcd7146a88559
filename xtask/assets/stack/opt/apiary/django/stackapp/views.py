"""A JSON API that writes and reads rows in PostgreSQL:
GET /            who answers and who asked
GET /rows        every row
GET /rows?add=T  adds a row with text T (and the client's address)"""
import socket

from django.db import connection
from django.http import JsonResponse

TABLE = """CREATE TABLE IF NOT EXISTS stack_rows (
    id serial PRIMARY KEY, text text NOT NULL, client text NOT NULL,
    at timestamptz NOT NULL DEFAULT now())"""


def index(request):
    return JsonResponse({
        "app": "django",
        "host": socket.gethostname(),
        "client": request.META.get("REMOTE_ADDR"),
    })


def rows(request):
    client = request.META.get("REMOTE_ADDR")
    with connection.cursor() as c:
        c.execute(TABLE)
        added = None
        text = request.GET.get("add")
        if text is not None:
            c.execute(
                "INSERT INTO stack_rows (text, client) VALUES (%s, %s) RETURNING id",
                [text[:200], client],
            )
            added = c.fetchone()[0]
        c.execute("SELECT id, text, client FROM stack_rows ORDER BY id")
        all_rows = [{"id": i, "text": t, "client": a} for i, t, a in c.fetchall()]
    return JsonResponse({"client": client, "added": added, "rows": all_rows})
