"""QLoRA Studio: point-and-click QLoRA fine-tuning on one workstation."""

__version__ = "0.1.0"
APP_ID = "io.github.qlora_studio.QLoRAStudio"
APP_NAME = "QLoRA Studio"
