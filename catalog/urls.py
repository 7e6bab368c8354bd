from django.urls import path

from catalog import api, views

urlpatterns = [
    path("models/", views.model_list, name="models"),
    # --- playground ---
    path("playground/", views.playground, name="playground"),
    path("playground/key/", views.playground_key, name="playground_key"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = [
    path("models/", api.ModelListApi.as_view(), name="api-models"),
    # Model ids may hold a slash ("meta-llama/llama-3.1-8b").
    path("models/<path:model_id>/", api.ModelDetailApi.as_view(), name="api-model-detail"),
]
