from django.contrib import admin

from training.models import Configuration, HeatMap, Sweep, TrainingRun


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    list_display = ["pk", "name", "cohort", "evaluate", "created_at"]
    list_filter = ["cohort"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["pk", "cohort", "sweep", "alpha", "beta", "status", "epochs_completed",
                    "best_metric", "worker", "created_at"]  # fmt: skip
    list_filter = ["status", "cohort"]
    readonly_fields = ["progress", "history", "log_tail", "heartbeat_at", "attempts"]


@admin.register(Configuration)
class ConfigurationAdmin(admin.ModelAdmin):
    list_display = ["name", "cohort", "created_at"]


@admin.register(HeatMap)
class HeatMapAdmin(admin.ModelAdmin):
    list_display = ["pk", "run", "slide", "rows", "cols", "l0_cell_size", "created_at"]
    list_filter = ["run"]
    raw_id_fields = ["run", "slide"]
