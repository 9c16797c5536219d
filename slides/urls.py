"""URLs of the slides API, included under /api/."""

from django.urls import path

from slides import apis

urlpatterns = [
    path("auth/token/", apis.TokenCreateApi.as_view(), name="api-token"),
    path("me/", apis.MeApi.as_view(), name="api-me"),
    path("cohorts/", apis.CohortListApi.as_view(), name="api-cohort-list"),
    path("cohorts/<int:cohort_id>/", apis.CohortDetailApi.as_view(), name="api-cohort-detail"),
    path(
        "cohorts/<int:cohort_id>/members/",
        apis.CohortMemberListApi.as_view(),
        name="api-cohort-member-list",
    ),
    path(
        "cohorts/<int:cohort_id>/members/<int:user_id>/",
        apis.CohortMemberDetailApi.as_view(),
        name="api-cohort-member-detail",
    ),
    path(
        "cohorts/<int:cohort_id>/uploads",
        apis.CohortUploadListApi.as_view(),
        name="api-cohort-upload-list",
    ),
    path(
        "cohorts/<int:cohort_id>/label-file",
        apis.CohortLabelFileApi.as_view(),
        name="api-cohort-label-file",
    ),
    path("uploads/<int:upload_id>", apis.UploadDetailApi.as_view(), name="api-upload-detail"),
    path("cases/", apis.CaseListApi.as_view(), name="api-case-list"),
    path("slides/", apis.SlideListApi.as_view(), name="api-slide-list"),
    path("slides/<int:slide_id>/", apis.SlideDetailApi.as_view(), name="api-slide-detail"),
    path(
        "slides/<int:slide_id>/thumbnail",
        apis.SlideThumbnailApi.as_view(),
        name="api-slide-thumbnail",
    ),
    path(
        "slides/<int:slide_id>/tissue-mask",
        apis.SlideTissueMaskApi.as_view(),
        name="api-slide-tissue-mask",
    ),
    path(
        "slides/<int:slide_id>/associated/<str:name>",
        apis.SlideAssociatedImageApi.as_view(),
        name="api-slide-associated",
    ),
    path("slides/<int:slide_id>.dzi", apis.SlideDziApi.as_view(), name="api-slide-dzi"),
    path(
        "slides/<int:slide_id>_files/<int:level>/<int:col>_<int:row>.jpeg",
        apis.SlideTileApi.as_view(),
        name="api-slide-tile",
    ),
    path(
        "slides/<int:slide_id>/annotations",
        apis.SlideAnnotationsApi.as_view(),
        name="api-slide-annotations",
    ),
    path(
        "slides/<int:slide_id>/annotations.xml",
        apis.SlideAnnotationsXmlApi.as_view(),
        name="api-slide-annotations-xml",
    ),
    path(
        "annotations/<int:annotation_id>",
        apis.AnnotationDetailApi.as_view(),
        name="api-annotation-detail",
    ),
]
