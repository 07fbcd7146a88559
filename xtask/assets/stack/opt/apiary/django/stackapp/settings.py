"""Settings of the stand-in for the tutorial's Django app: PostgreSQL at
host `db` (the stack's service), its password from the secret
/run/secrets/my_password, else POSTGRES_PASSWORD, else the tutorial's."""
import os
import secrets


def _password():
    path = os.environ.get("POSTGRES_PASSWORD_FILE", "/run/secrets/my_password")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return os.environ.get("POSTGRES_PASSWORD", "password123")


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_hex(32)
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = []
MIDDLEWARE = []
ROOT_URLCONF = "stackapp.urls"
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("POSTGRES_DB", "postgres"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "PASSWORD": _password(),
        "HOST": os.environ.get("DB_HOST", "db"),
        "PORT": "5432",
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"connect_timeout": 3},
    }
}
