from django.contrib import admin

from slides.models import Case, Cohort, Membership, Slide


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Cohort)
class CohortAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "default_location", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ["submitter_id", "cohort"]
    list_filter = ["cohort"]
    search_fields = ["submitter_id"]


@admin.register(Slide)
class SlideAdmin(admin.ModelAdmin):
    list_display = ["original_filename", "cohort", "case", "state", "label", "split", "location"]
    list_filter = ["cohort", "state", "label", "split", "location", "slide_type"]
    search_fields = ["original_filename", "case__submitter_id"]
    raw_id_fields = ["case"]
