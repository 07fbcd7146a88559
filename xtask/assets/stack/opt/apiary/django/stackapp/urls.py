from django.urls import path

from stackapp import views

urlpatterns = [
    path("", views.index),
    path("rows", views.rows),
]
