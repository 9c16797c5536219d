from django.contrib import admin

from evaluation.models import Evaluation


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ["pk", "run", "split", "auc_tissue", "auc_all", "f1", "n_slides", "created_at"]
    list_filter = ["split"]
    raw_id_fields = ["run"]
