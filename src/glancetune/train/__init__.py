"""Training: the plan (`plan`), the job (`job`) and the modules around its loop (`loop`, `hooks`, `runtime`,
`encode`, `lora`, `optim`, `checkpoint`, `logs`)."""
