from django.urls import path

from subscribers import views

urlpatterns = [
    path("u/<str:token>/", views.unsubscribe, name="unsubscribe"),
]
