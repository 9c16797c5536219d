from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import views
from slides.apis import ApiNotFound

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/", include("slides.urls")),
    path("api/", include("training.urls")),
    path("api/", include("evaluation.urls")),
    path("", include("slides.page_urls")),
    path("", include("training.page_urls")),
    path("", include("evaluation.page_urls")),
    # Last: any other /api/ path is a 404 in the API's error shape, not Django's HTML page.
    re_path(r"^api/", ApiNotFound.as_view(), name="api-not-found"),
]
