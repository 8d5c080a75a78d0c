"""autoaccel.plan.steps."""
