import psycopg2

from stackapp import settings


def ping():
    d = settings.DATABASES["default"]
    psycopg2.connect(
        host=d["HOST"], port=d["PORT"], user=d["USER"], password=d["PASSWORD"],
        dbname=d["NAME"], connect_timeout=3,
    ).close()
