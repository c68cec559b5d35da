from django.urls import path

from subscribers import views

urlpatterns = [
    path("u/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("confirm/<str:token>/", views.optin_confirm_page, name="optin_confirm"),
    path("p/<str:token>/", views.preferences, name="preferences"),
]
