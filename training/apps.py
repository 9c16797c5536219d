from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training runs and tumor maps"

    def ready(self) -> None:
        # Slides must not import training: training tells slides which cases are fixed.
        from slides.services import register_split_guard
        from training.selectors import trained_cases

        register_split_guard(trained_cases)
