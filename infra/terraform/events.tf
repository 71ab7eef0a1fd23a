# Lifecycle events for the SaaS app (docs/fanout.md#lifecycle-events): every function publishes
# its requests' state changes to this bus (FANOUT_EVENT_BUS, source `fanout`); the app
# subscribes with its own rules (to SQS, a Lambda, an API destination). Created here unless
# event_bus_name names an existing one.

resource "aws_cloudwatch_event_bus" "lifecycle" {
  count = var.lifecycle_events && var.event_bus_name == "" ? 1 : 0
  name  = "${var.name_prefix}-events"
  tags  = var.tags
}

locals {
  bus_is_arn = can(regex("^arn:", var.event_bus_name))
  # PutEvents takes a bus name or ARN; IAM needs the ARN (another account's bus: give its ARN)
  event_bus = !var.lifecycle_events ? "" : (var.event_bus_name != "" ? var.event_bus_name :
  join("", aws_cloudwatch_event_bus.lifecycle[*].name))
  event_bus_arn = !var.lifecycle_events ? "" : (local.bus_is_arn ? var.event_bus_name : (var.event_bus_name != "" ?
    "arn:${local.partition}:events:${local.region}:${local.account}:event-bus/${var.event_bus_name}" :
  join("", aws_cloudwatch_event_bus.lifecycle[*].arn)))
}

# the functions' settings for events, quality retrains and metrics (merged into main.tf's)
locals {
  lifecycle_settings = {
    FANOUT_EVENT_BUS           = local.event_bus
    FANOUT_MAX_QUALITY_RETRIES = tostring(var.max_quality_retries)
    FANOUT_METRICS_NAMESPACE   = var.metrics_namespace
  }
}
