"""Who may do what in a cohort: the owner, and members as viewers, annotators or managers.

Roles are ordered: viewers read, annotators also draw contours, managers also upload, label,
split, queue training and manage members; the owner may do everything, including deleting the
cohort. Someone who is not a member is told that the object does not exist (404), never that it
is forbidden (403): the existence of other people's cohorts is not revealed.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from common.errors import NotFoundError, PermissionDeniedError
from slides.models import Cohort, Membership, Role

OWNER = "owner"
VIEWER = Role.VIEWER.value
ANNOTATOR = Role.ANNOTATOR.value
MANAGER = Role.MANAGER.value
# Higher ranks include every right of the lower ones.
ROLE_RANK: dict[str, int] = {VIEWER: 1, ANNOTATOR: 2, MANAGER: 3, OWNER: 4}

AnyUser = AbstractBaseUser | AnonymousUser


def _user_id(user: AnyUser | None) -> int | None:
    """The id of a signed-in user, None for nobody or an anonymous visitor."""
    if user is None or not user.is_authenticated or user.pk is None:
        return None
    return int(user.pk)


def visible_cohorts(user: AnyUser | None) -> QuerySet[Cohort]:
    """The cohorts a user owns or is a member of (none for an anonymous user)."""
    user_id = _user_id(user)
    if user_id is None:
        return Cohort.objects.none()
    member_of = Membership.objects.filter(user_id=user_id).values("cohort_id")
    return Cohort.objects.filter(Q(owner_id=user_id) | Q(pk__in=member_of))


def cohort_role(user: AnyUser | None, cohort: Cohort) -> str | None:
    """``"owner"``, the member's role, or None for someone outside the cohort."""
    user_id = _user_id(user)
    if user_id is None:
        return None
    if cohort.owner_id == user_id:
        return OWNER
    role: str | None = (
        Membership.objects.filter(cohort=cohort, user_id=user_id)
        .values_list("role", flat=True)
        .first()
    )
    return role


def has_role(role: str | None, minimum: str) -> bool:
    return role is not None and ROLE_RANK.get(role, 0) >= ROLE_RANK[minimum]


def require_role(
    user: AnyUser | None, cohort: Cohort, minimum: str, *, what: str = "cohort"
) -> str:
    """The user's role in the cohort when it is at least ``minimum``.

    Raises NotFoundError for anyone outside the cohort (the object's existence stays hidden)
    and PermissionDeniedError for a member whose role is too low.
    """
    if minimum not in ROLE_RANK:
        raise ValueError(f"unknown role {minimum!r}")
    role = cohort_role(user, cohort)
    if role is None:
        raise NotFoundError(f"No such {what}.")
    if not has_role(role, minimum):
        needed = "the owner" if minimum == OWNER else f"a {minimum} or above"
        raise PermissionDeniedError(
            f"Only {needed} of cohort {cohort.name!r} may do this; you are a {role}.",
            details={"role": role, "required": minimum},
        )
    return role
