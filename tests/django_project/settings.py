"""A minimal Django project that uses eventbus; the database and broker are set by the test."""

import os

SECRET_KEY = "tests-only-not-a-secret"  # a throwaway key for the test project
INSTALLED_APPS = ["django.contrib.contenttypes", "eventbus.django.EventbusConfig", "tests.django_project.orders"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["TEST_DJANGO_DB"]}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
EVENTBUS = {"AMQP_URL": os.environ["TEST_DJANGO_AMQP_URL"], "VAR_DIR": os.environ["TEST_DJANGO_VAR_DIR"],
            "PUBLISH_TIMEOUT": 5}
