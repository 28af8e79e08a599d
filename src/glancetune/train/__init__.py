"""Training: LoRA setup (`lora`), the flow-matching step loop (`loop`), and the train/glance jobs (`jobs`)."""
