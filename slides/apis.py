"""The slides API: cohorts, members, cases, slides, images, DeepZoom tiles, contours, uploads.

One small class per operation: validate the input with a serializer, call one service or
selector, respond. Permissions: :mod:`slides.permissions` (404 for outsiders, 403 for members
whose role is too low); errors: ``config.exception_handler``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpResponse
from django.urls import Resolver404, resolve
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import authentication, exceptions, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from common.errors import AnnotationError, NotFoundError, PayloadTooLargeError
from slides import selectors
from slides.models import Case, Cohort, Membership, Slide, Upload
from slides.permissions import ANNOTATOR, MANAGER, OWNER
from slides.serializers import (
    AnnotationsCreatedSerializer,
    CaseSerializer,
    CohortCreateSerializer,
    CohortSerializer,
    CohortUpdateSerializer,
    ErrorSerializer,
    ImportReportSerializer,
    LabelFileSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    MemberSerializer,
    MeSerializer,
    SlideSerializer,
    SlideUpdateSerializer,
    TokenRequestSerializer,
    TokenSerializer,
    UploadCreateSerializer,
    UploadSerializer,
)
from slides.services import cohort_create
from slides.services import members as member_services
from slides.services import uploads as upload_services
from slides.tiles import DZI_MAX_AGE_S, TILE_MAX_AGE_S, slide_dzi, slide_tile

# Browsers may keep derived images of a slide (thumbnail, mask, label) this long.
IMAGE_MAX_AGE_S = 3600

# -- plumbing shared by the API modules ---------------------------------------------------------


def errors(*codes: int) -> dict[int, Any]:
    """Schema entries for error responses (all share ErrorSerializer's shape)."""
    return {code: ErrorSerializer for code in codes}


# Errors every signed-in endpoint about one object can answer.
OBJECT_ERRORS = errors(403, 404)


class FileNegotiation(DefaultContentNegotiation):
    """Endpoints that answer with a file: the file has its own content type whatever the
    Accept header says (an image request accepting only image/* is fine), and errors are
    always JSON in the error shape."""

    def select_renderer(
        self,
        request: Request,
        renderers: Iterable[BaseRenderer],
        format_suffix: str | None = None,
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication, its lookup written as one query: it runs for every request
    of a script and of the tile viewer, and the ORM spends more time compiling the join than
    the database answering it (bench/RESULTS.md, DeepZoom tiles)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        user_model = get_user_model()
        quote = connection.ops.quote_name
        users = quote(user_model._meta.db_table)
        user_pk = quote(user_model._meta.pk.column or "id")
        tokens = quote(Token._meta.db_table)
        token_user = quote(Token._meta.get_field("user").column)
        sql = (
            f"SELECT u.* FROM {users} u JOIN {tokens} t ON t.{token_user} = u.{user_pk} "
            f"WHERE t.{quote('key')} = %s"
        )
        found = list(user_model.objects.raw(sql, [key]))
        if not found:
            raise exceptions.AuthenticationFailed("Invalid token.")
        user = found[0]
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)


class ApiMixin:
    """Authentication of every API view; ids in the path beyond the database's bigint name
    nothing: 404, never an overflow."""

    authentication_classes: Sequence[type[authentication.BaseAuthentication]] = (
        authentication.SessionAuthentication,
        TokenAuthentication,
    )

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        for name, value in kwargs.items():
            if isinstance(value, int) and value > selectors.MAX_ID:
                raise NotFoundError(f"No such {name.removesuffix('_id')}.")


class Api(ApiMixin, APIView):
    """Base of every API view of TumorMap."""


class FileApi(Api):
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FileNegotiation


def file_response(
    data: bytes | str,
    content_type: str,
    *,
    max_age: int | None = IMAGE_MAX_AGE_S,
    filename: str | None = None,
) -> HttpResponse:
    response = HttpResponse(data, content_type=content_type)
    if max_age is not None:
        response["Cache-Control"] = f"private, max-age={max_age}"
    else:
        response["Cache-Control"] = "private, no-cache"
    if filename:
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class ListApi(ApiMixin, GenericAPIView):
    """A paginated, filtered list; subclasses give ``get_queryset`` (a selector)."""

    filter_backends = [DjangoFilterBackend]

    def list_response(self, queryset: QuerySet[Any] | list[Any]) -> Response:
        if isinstance(queryset, QuerySet):
            queryset = self.filter_queryset(queryset)
        page = self.paginate_queryset(queryset)
        serializer_class = self.get_serializer_class()
        return self.get_paginated_response(serializer_class(page, many=True).data)


def validated(serializer_class: type[BaseSerializer], data: Any, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@extend_schema(exclude=True)
class ApiNotFound(APIView):
    """Any other path under /api/: a 404 in the error shape (not Django's HTML page)."""

    authentication_classes: Sequence[type[authentication.BaseAuthentication]] = ()
    permission_classes = [AllowAny]

    def http_method_not_allowed(  # type: ignore[override]
        self, request: Request, *args: Any, **kwargs: Any
    ) -> Response:
        path = request.path
        message = f"No API endpoint at {path}."
        if not path.endswith("/"):
            try:
                resolved = resolve(path + "/")
            except Resolver404:
                resolved = None
            if resolved is not None and resolved.url_name != "api-not-found":
                message += f" Did you mean {path}/ ?"
        raise NotFoundError(message, details={"path": path})

    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        return self.http_method_not_allowed(request)


# -- accounts ----------------------------------------------------------------------------------


class TokenCreateApi(Api):
    """Exchange a user name and password for an API token (``Authorization: Token <key>``)."""

    authentication_classes: Sequence[type[authentication.BaseAuthentication]] = ()
    permission_classes = [AllowAny]
    # Password guessing: attempts per client address (TUMORMAP_AUTH_TOKEN_RATE), successful
    # or not, counted in each web process's cache.
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth-token"

    @extend_schema(
        operation_id="auth_token_create",
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, **errors(400, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        data = validated(AuthTokenSerializer, request.data, context={"request": request})
        token, _ = Token.objects.get_or_create(user=data["user"])
        return Response({"token": token.key})


class MeApi(Api):
    @extend_schema(operation_id="me_retrieve", responses={200: MeSerializer, **errors(403)})
    def get(self, request: Request) -> Response:
        return Response({"id": request.user.pk, "username": request.user.get_username()})


# -- cohorts -----------------------------------------------------------------------------------


class CohortListApi(ListApi):
    serializer_class = CohortSerializer
    filterset_class = selectors.CohortFilter

    def get_queryset(self) -> QuerySet[Cohort]:
        return selectors.cohort_list(user=self.request.user)

    @extend_schema(operation_id="cohorts_list", responses=CohortSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())

    @extend_schema(
        operation_id="cohorts_create",
        request=CohortCreateSerializer,
        responses={201: CohortSerializer, **errors(400, 409)},
    )
    def post(self, request: Request) -> Response:
        data = validated(CohortCreateSerializer, request.data)
        cohort = cohort_create(owner=request.user, **data)  # type: ignore[arg-type]
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort.pk)
        return Response(CohortSerializer(cohort).data, status=status.HTTP_201_CREATED)


class CohortDetailApi(Api):
    @extend_schema(
        operation_id="cohorts_retrieve", responses={200: CohortSerializer, **OBJECT_ERRORS}
    )
    def get(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id)
        return Response(CohortSerializer(cohort).data)

    @extend_schema(
        operation_id="cohorts_partial_update",
        request=CohortUpdateSerializer,
        responses={200: CohortSerializer, **errors(400, 403, 404, 409)},
    )
    def patch(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        data = validated(CohortUpdateSerializer, request.data)
        clear_mpp = "default_mpp" in data and data["default_mpp"] is None
        member_services.cohort_update(cohort=cohort, clear_default_mpp=clear_mpp, **data)
        return Response(
            CohortSerializer(selectors.cohort_get(user=request.user, cohort_id=cohort_id)).data
        )

    @extend_schema(operation_id="cohorts_destroy", responses={204: None, **OBJECT_ERRORS})
    def delete(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=OWNER)
        member_services.cohort_delete(cohort=cohort)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CohortMemberListApi(ListApi):
    serializer_class = MemberSerializer
    queryset = Membership.objects.none()  # for the schema only: the list is member_list()

    @extend_schema(
        operation_id="cohorts_members_list",
        responses={200: MemberSerializer(many=True), **OBJECT_ERRORS},
    )
    def get(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id)
        return self.list_response(selectors.member_list(cohort=cohort))

    @extend_schema(
        operation_id="cohorts_members_create",
        request=MemberAddSerializer,
        responses={201: MemberSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        data = validated(MemberAddSerializer, request.data)
        m = member_services.member_add(cohort=cohort, **data)
        body = {"user": m.user_id, "username": m.user.get_username(), "role": m.role,
                "since": m.created_at}  # fmt: skip
        return Response(MemberSerializer(body).data, status=status.HTTP_201_CREATED)


class CohortMemberDetailApi(Api):
    @extend_schema(
        operation_id="cohorts_members_partial_update",
        request=MemberRoleSerializer,
        responses={200: MemberSerializer, **errors(400, 403, 404, 409)},
    )
    def patch(self, request: Request, cohort_id: int, user_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        data = validated(MemberRoleSerializer, request.data)
        m = member_services.member_change_role(cohort=cohort, user_id=user_id, role=data["role"])
        body = {"user": m.user_id, "username": m.user.get_username(), "role": m.role,
                "since": m.created_at}  # fmt: skip
        return Response(MemberSerializer(body).data)

    @extend_schema(
        operation_id="cohorts_members_destroy", responses={204: None, **errors(403, 404, 409)}
    )
    def delete(self, request: Request, cohort_id: int, user_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        member_services.member_remove(cohort=cohort, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- cases and slides --------------------------------------------------------------------------


class CaseListApi(ListApi):
    serializer_class = CaseSerializer
    filterset_class = selectors.CaseFilter

    def get_queryset(self) -> QuerySet[Case]:
        return selectors.case_list(user=self.request.user)

    @extend_schema(operation_id="cases_list", responses=CaseSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())


class SlideListApi(ListApi):
    serializer_class = SlideSerializer
    filterset_class = selectors.SlideFilter

    def get_queryset(self) -> QuerySet[Slide]:
        return selectors.slide_list(user=self.request.user)

    @extend_schema(operation_id="slides_list", responses=SlideSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())


class SlideDetailApi(Api):
    @extend_schema(
        operation_id="slides_retrieve", responses={200: SlideSerializer, **OBJECT_ERRORS}
    )
    def get(self, request: Request, slide_id: int) -> Response:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        return Response(SlideSerializer(slide).data)

    @extend_schema(
        operation_id="slides_partial_update",
        request=SlideUpdateSerializer,
        responses={200: SlideSerializer, **errors(400, 403, 404, 409)},
    )
    def patch(self, request: Request, slide_id: int) -> Response:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id, minimum=MANAGER)
        data = validated(SlideUpdateSerializer, request.data)
        slide = member_services.slide_update(slide=slide, **data)
        return Response(SlideSerializer(slide).data)


def _image_schema(operation_id: str, media_type: str) -> Any:
    return extend_schema(
        operation_id=operation_id,
        responses={(200, media_type): OpenApiTypes.BINARY, **errors(403, 404, 409)},
    )


class SlideThumbnailApi(FileApi):
    @_image_schema("slides_thumbnail_retrieve", "image/jpeg")
    def get(self, request: Request, slide_id: int) -> HttpResponse:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        return file_response(selectors.slide_thumbnail_jpeg(slide=slide), "image/jpeg")


class SlideTissueMaskApi(FileApi):
    @_image_schema("slides_tissue_mask_retrieve", "image/png")
    def get(self, request: Request, slide_id: int) -> HttpResponse:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        path = selectors.slide_tissue_mask_path(slide=slide)
        return file_response(path.read_bytes(), "image/png")


class SlideAssociatedImageApi(FileApi):
    @_image_schema("slides_associated_retrieve", "image/png")
    def get(self, request: Request, slide_id: int, name: str) -> HttpResponse:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        return file_response(selectors.slide_associated_png(slide=slide, name=name), "image/png")


class SlideDziApi(FileApi):
    @_image_schema("slides_dzi_retrieve", "application/xml")
    def get(self, request: Request, slide_id: int) -> HttpResponse:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        return file_response(slide_dzi(slide=slide), "application/xml", max_age=DZI_MAX_AGE_S)


class SlideTileApi(FileApi):
    """One DeepZoom tile; ``X-Tile-Cache`` says whether it came from the tile cache."""

    @_image_schema("slides_tile_retrieve", "image/jpeg")
    def get(self, request: Request, slide_id: int, level: int, col: int, row: int) -> HttpResponse:
        slide = selectors.slide_for_tiles(user=request.user, slide_id=slide_id)
        data, hit = slide_tile(slide=slide, level=level, col=col, row=row)
        response = file_response(data, "image/jpeg", max_age=TILE_MAX_AGE_S)
        response["X-Tile-Cache"] = "hit" if hit else "miss"
        return response


# -- contours ----------------------------------------------------------------------------------


class SlideAnnotationsApi(FileApi):
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="slides_annotations_retrieve",
        responses={(200, "application/geo+json"): OpenApiTypes.OBJECT, **OBJECT_ERRORS},
    )
    def get(self, request: Request, slide_id: int) -> HttpResponse:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        collection = selectors.slide_annotations_geojson(slide=slide)
        return file_response(json.dumps(collection), "application/geo+json", max_age=None)

    @extend_schema(
        operation_id="slides_annotations_create",
        request={"application/json": OpenApiTypes.OBJECT},
        responses={201: AnnotationsCreatedSerializer, **errors(400, 403, 404)},
        description="Store the contours of a GeoJSON Feature or FeatureCollection (level-0 "
        "pixel coordinates). All or nothing: a malformed document stores nothing.",
    )
    def post(self, request: Request, slide_id: int) -> Response:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id, minimum=ANNOTATOR)
        if not isinstance(request.data, dict | list):
            raise AnnotationError("The body must be a GeoJSON object.")
        rows = member_services.annotations_create(
            slide=slide,
            geojson=request.data,
            user=request.user,  # type: ignore[arg-type]
        )
        body = {"ids": [a.pk for a in rows], "contours": len(rows),
                "vertices": sum(a.n_vertices for a in rows), "warnings": []}  # fmt: skip
        return Response(AnnotationsCreatedSerializer(body).data, status=status.HTTP_201_CREATED)


class SlideAnnotationsXmlApi(FileApi):
    @_image_schema("slides_annotations_xml_retrieve", "application/xml")
    def get(self, request: Request, slide_id: int) -> HttpResponse:
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
        xml = selectors.slide_annotations_asap_xml(slide=slide)
        stem = slide.original_filename.rsplit(".", 1)[0]
        return file_response(xml, "application/xml", max_age=None, filename=f"{stem}.xml")


class AnnotationDetailApi(Api):
    @extend_schema(operation_id="annotations_destroy", responses={204: None, **OBJECT_ERRORS})
    def delete(self, request: Request, annotation_id: int) -> Response:
        annotation = selectors.annotation_get(
            user=request.user, annotation_id=annotation_id, minimum=ANNOTATOR
        )
        member_services.annotation_delete(annotation=annotation)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- uploads -----------------------------------------------------------------------------------


class CohortUploadListApi(ListApi):
    serializer_class = UploadSerializer
    queryset = Upload.objects.none()  # for the schema only: the list is upload_list()

    @extend_schema(
        operation_id="cohorts_uploads_list",
        responses={200: UploadSerializer(many=True), **OBJECT_ERRORS},
    )
    def get(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        return self.list_response(selectors.upload_list(cohort=cohort))

    @extend_schema(
        operation_id="cohorts_uploads_create",
        request=UploadCreateSerializer,
        responses={201: UploadSerializer, **errors(400, 403, 404, 413, 507)},
        description="Announce a slide file; then PUT its bytes to the upload's url in "
        "Content-Range chunks.",
    )
    def post(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        data = validated(UploadCreateSerializer, request.data)
        upload = upload_services.upload_create(cohort=cohort, user=request.user, **data)  # type: ignore[arg-type]
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)


class RawBodyParser(BaseParser):
    """Declares that chunks are raw bytes; the view streams them and never parses them."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream


def _offset_response(upload: Upload, code: int = status.HTTP_200_OK) -> Response:
    response = Response(UploadSerializer(upload).data, status=code)
    response["Upload-Offset"] = str(upload.offset)
    response["Cache-Control"] = "no-store"
    if upload.offset:
        response["Range"] = f"bytes=0-{upload.offset - 1}"
    return response


class UploadDetailApi(Api):
    parser_classes = [RawBodyParser]

    @extend_schema(
        operation_id="uploads_retrieve",
        responses={200: UploadSerializer, **OBJECT_ERRORS},
        description="The upload's state and offset (bytes stored); HEAD gives the offset in "
        "the Upload-Offset header. Resume a broken upload from the offset.",
    )
    def get(self, request: Request, upload_id: int) -> Response:
        upload = selectors.upload_get(user=request.user, upload_id=upload_id, minimum=MANAGER)
        return _offset_response(upload)

    @extend_schema(
        operation_id="uploads_chunk_update",
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "Content-Range",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=True,
                description="bytes START-END/TOTAL (END inclusive); START must be the offset.",
            )
        ],
        responses={
            200: OpenApiResponse(UploadSerializer, description="Chunk stored; more to come."),
            201: OpenApiResponse(UploadSerializer, description="Complete: registered as a slide."),
            **errors(400, 403, 404, 409, 413, 422),
        },
    )
    def put(self, request: Request, upload_id: int) -> Response:
        upload = selectors.upload_get(user=request.user, upload_id=upload_id, minimum=MANAGER)
        try:
            length: int | None = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = None
        upload = upload_services.upload_write_chunk(
            upload=upload,
            content_range=request.headers.get("Content-Range"),
            body=request.stream if request.stream is not None else _Empty(),
            content_length=length,
        )
        done = upload.offset == upload.size
        return _offset_response(upload, status.HTTP_201_CREATED if done else status.HTTP_200_OK)

    @extend_schema(operation_id="uploads_destroy", responses={204: None, **errors(403, 404, 409)})
    def delete(self, request: Request, upload_id: int) -> Response:
        upload = selectors.upload_get(user=request.user, upload_id=upload_id, minimum=MANAGER)
        upload_services.upload_abort(upload=upload)
        return Response(status=status.HTTP_204_NO_CONTENT)


class _Empty:
    def read(self, size: int = -1, /) -> bytes:
        return b""


class CohortLabelFileApi(Api):
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="cohorts_label_file_create",
        request={"multipart/form-data": LabelFileSerializer},
        responses={200: ImportReportSerializer, **errors(400, 403, 404, 413)},
        description="Apply a label CSV (filename,label[,case_id,location,split]), a GDC "
        "manifest or a GDC sample sheet, recognised by its header.",
    )
    def post(self, request: Request, cohort_id: int) -> Response:
        cohort = selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=MANAGER)
        data = validated(LabelFileSerializer, request.data)
        upload = data["file"]
        if upload.size is not None and upload.size > upload_services.MAX_LABEL_FILE_BYTES:
            raise PayloadTooLargeError(
                f"A label file has at most {upload_services.MAX_LABEL_FILE_BYTES} bytes.",
                details={"limit": upload_services.MAX_LABEL_FILE_BYTES},
            )
        kind, report = upload_services.label_file_import(cohort=cohort, data=upload.read())
        return Response(ImportReportSerializer({"kind": kind, **report.as_dict()}).data)
