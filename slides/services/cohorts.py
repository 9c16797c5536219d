from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from common.errors import ConflictError, InvalidInputError
from slides.models import Cohort, Membership, Role

# Cohort names appear in URLs, file names of reports and command lines.
MAX_COHORT_NAME = 200


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInputError("A cohort needs a name.")
    if len(name) > MAX_COHORT_NAME:
        raise InvalidInputError(f"A cohort name has at most {MAX_COHORT_NAME} characters.")
    return name


def cohort_create(
    *,
    name: str,
    owner: User,
    description: str = "",
    default_location: str = "",
    default_mpp: float | None = None,
) -> Cohort:
    name = _check_name(name)
    if default_mpp is not None and not 0.01 <= default_mpp <= 100:
        raise InvalidInputError(f"default_mpp must be a resolution in um/px, not {default_mpp}.")
    try:
        with transaction.atomic():
            return Cohort.objects.create(
                name=name,
                owner=owner,
                description=description,
                default_location=default_location.strip().lower(),
                default_mpp=default_mpp,
            )
    except IntegrityError:
        raise ConflictError(f"A cohort named {name!r} exists already.") from None


def cohort_get_or_create(
    *, name: str, owner: User, default_location: str = ""
) -> tuple[Cohort, bool]:
    existing = Cohort.objects.filter(name=_check_name(name)).first()
    if existing is not None:
        return existing, False
    return cohort_create(name=name, owner=owner, default_location=default_location), True


def member_set_role(*, cohort: Cohort, user: User, role: str) -> Membership:
    if role not in Role.values:
        raise InvalidInputError(f"Unknown role {role!r}; expected one of {', '.join(Role.values)}.")
    membership, _ = Membership.objects.update_or_create(
        cohort=cohort, user=user, defaults={"role": role}
    )
    return membership
