# The operator's view: alarms on the handlers' EMF metrics (fanout/telemetry.py, namespace
# var.metrics_namespace, dimension service = name_prefix), on the dead-letter queue and on the
# launcher, all notifying one SNS topic; and a dashboard of the pipeline and the training jobs.

resource "aws_sns_topic" "alarms" {
  #checkov:skip=CKV_AWS_26:CloudWatch alarms cannot publish to a topic encrypted with the AWS managed key alias/aws/sns; with kms_key_arn set the topic uses that key (its key policy must let cloudwatch.amazonaws.com use it)
  count             = var.alarms && var.alarm_topic_arn == "" ? 1 : 0
  name              = "${var.name_prefix}-alarms"
  kms_master_key_id = var.kms_key_arn != "" ? var.kms_key_arn : null
  tags              = var.tags
}

locals {
  alarm_topic      = !var.alarms ? "" : (var.alarm_topic_arn != "" ? var.alarm_topic_arn : join("", aws_sns_topic.alarms[*].arn))
  service_dim      = tomap({ service = local.job_prefix })
  throttle_periods = ceil(var.alarm_throttle_minutes / 5)

  # one alarm per entry (the failure rate, a metric-math alarm, is its own resource below)
  alarm_specs = {
    oldest_pending = {
      description = "The oldest PENDING request has waited more than ${var.alarm_oldest_pending_minutes} minutes (launches failing, throttled or out of capacity: see the launcher's log and the dashboard)."
      namespace   = var.metrics_namespace, metric = "OldestPendingAge", dimensions = local.service_dim, statistic = "Maximum"
      period      = 300, periods = 2, datapoints = 2, threshold = var.alarm_oldest_pending_minutes * 60
    }
    dead_letters = {
      description = "Invocations failed after Lambda's retries are waiting in ${aws_sqs_queue.dead_letters.name} (replay them once the cause is fixed)."
      namespace   = "AWS/SQS", metric = "ApproximateNumberOfMessagesVisible", statistic = "Maximum"
      dimensions  = tomap({ QueueName = aws_sqs_queue.dead_letters.name })
      period      = 300, periods = 1, datapoints = 1, threshold = 0
    }
    launcher_errors = {
      description = "launch_pending failed in 2 of its last 3 periods (its log says why); pending requests wait meanwhile."
      namespace   = "AWS/Lambda", metric = "Errors", statistic = "Sum"
      dimensions  = tomap({ FunctionName = local.function_names["launch_pending"] })
      period      = 300, periods = 3, datapoints = 2, threshold = 0
    }
    launch_throttling = {
      description = "CreateTrainingJob has been throttled in every 5-minute period for ${var.alarm_throttle_minutes} minutes (lower FANOUT_LAUNCH_RATE or ask for a higher rate)."
      namespace   = var.metrics_namespace, metric = "LaunchThrottles", dimensions = local.service_dim, statistic = "Sum"
      period      = 300, periods = local.throttle_periods, datapoints = local.throttle_periods, threshold = 0
    }
    events_unpublished = {
      description = "Lifecycle events EventBridge did not take for 15 minutes: the app is not being told (they wait in the requests' outbox; see the handlers' logs)."
      namespace   = var.metrics_namespace, metric = "EventPublishFailures", dimensions = local.service_dim, statistic = "Sum"
      period      = 300, periods = 3, datapoints = 3, threshold = 0
    }
  }
  alarms = { for k, v in local.alarm_specs : k => v if var.alarms && (k != "events_unpublished" || var.lifecycle_events) }
}

resource "aws_cloudwatch_metric_alarm" "pipeline" {
  for_each            = local.alarms
  alarm_name          = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = each.value.periods
  datapoints_to_alarm = each.value.datapoints
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.alarm_topic]
  ok_actions          = [local.alarm_topic]
  tags                = var.tags
}

# FAILED / (FAILED + ready + needing review) over an hour, only once enough requests ended
resource "aws_cloudwatch_metric_alarm" "failure_rate" {
  count               = var.alarms ? 1 : 0
  alarm_name          = "${var.name_prefix}-failure-rate"
  alarm_description   = "More than ${var.alarm_failure_rate_percent}% of the requests that ended in the last hour FAILED (the dashboard's failures by reason class say which kind)."
  comparison_operator = "GreaterThanThreshold"
  evaluation_periods  = 1
  threshold           = var.alarm_failure_rate_percent
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.alarm_topic]
  ok_actions          = [local.alarm_topic]
  tags                = var.tags

  metric_query {
    id          = "rate"
    expression  = "IF(ended >= ${var.alarm_failure_min_requests}, 100 * failed / ended, 0)"
    label       = "failed, % of ended requests"
    return_data = true
  }
  metric_query {
    id          = "failed"
    expression  = "FILL(f, 0)"
    return_data = false
  }
  metric_query {
    id          = "ended"
    expression  = "FILL(f, 0) + FILL(c, 0) + FILL(r, 0)"
    return_data = false
  }
  dynamic "metric_query" {
    for_each = { f = "RequestsFailed", c = "RequestsCompleted", r = "RequestsNeedingReview" }
    content {
      id          = metric_query.key
      return_data = false
      metric {
        namespace   = var.metrics_namespace
        metric_name = metric_query.value
        dimensions  = local.service_dim
        period      = 3600
        stat        = "Sum"
      }
    }
  }
}

locals {
  ns  = var.metrics_namespace
  svc = local.job_prefix
  # a metric widget of this stack's metrics: [name, stat] or [name, stat, "right"]
  pipeline_widget = { for title, lines in {
    "Requests per 5 minutes" = [["RequestsAccepted", "Sum"], ["RequestsLaunched", "Sum"], ["RequestsCompleted", "Sum"],
    ["RequestsNeedingReview", "Sum"], ["RequestsFailed", "Sum"], ["RequestsRetried", "Sum"], ["PreviewsReady", "Sum"]]
    "Waiting: pending requests and the oldest one's age (s)" = [["PendingRequests", "Maximum"], ["OldestPendingAge", "Maximum", "right"]]
    "Upload to launch, first preview and model (s)" = [["UploadToLaunchTime", "p50"], ["UploadToLaunchTime", "p90"],
    ["UploadToPreviewTime", "p50"], ["UploadToReadyTime", "p50"], ["UploadToReadyTime", "p90"]]
    "Launches" = [["JobsLaunched", "Sum"], ["TasksPerJob", "Average", "right"], ["LaunchThrottles", "Sum"],
    ["LaunchRetries", "Sum"]]
    "Lifecycle events" = [["EventsPublished", "Sum"], ["EventPublishRetries", "Sum"], ["EventPublishFailures", "Sum"],
    ["EventsRepublished", "Sum"]]
    } : title => [for line in lines : concat([local.ns, line[0], "service", local.svc],
  [merge({ stat = line[1] }, { for axis in slice(line, 2, length(line)) : "yAxis" => axis })])] }

  search = {
    "Failures and retries by reason class" = [
    "SEARCH('{${local.ns},service,ReasonClass} service=\"${local.svc}\" (MetricName=\"RequestsFailed\" OR MetricName=\"RequestsRetried\" OR MetricName=\"LaunchFailures\")', 'Sum', 300)"]
    "Quality verdicts"                 = ["SEARCH('{${local.ns},service,Verdict} service=\"${local.svc}\" MetricName=\"QualityVerdicts\"', 'Sum', 3600)"]
    "Training jobs: loss (train:loss)" = ["SEARCH('{/aws/sagemaker/TrainingJobs,Host} MetricName=\"train:loss\" ${local.svc}', 'Average', 60)"]
    "Training jobs: GPU and GPU memory (%)" = [
    "SEARCH('{/aws/sagemaker/TrainingJobs,Host} (MetricName=\"GPUUtilization\" OR MetricName=\"GPUMemoryUtilization\") ${local.svc}', 'Average', 60)"]
  }
  lambda_lines = [for k, name in local.function_names : ["AWS/Lambda", "Errors", "FunctionName", name, { stat = "Sum" }]]

  widgets = concat(
    [for title, metrics in local.pipeline_widget : { type = "metric", width = 12, height = 6,
    properties = { title = title, region = local.region, view = "timeSeries", period = 300, metrics = metrics } }],
    [for title, expressions in local.search : { type = "metric", width = 12, height = 6,
      properties = { title = title, region = local.region, view = "timeSeries", period = 300,
    metrics = [for i, e in expressions : [{ expression = e, id = "e${i}" }]] } }],
    [{ type = "metric", width = 12, height = 6, properties = { title = "Functions' errors; dead-letter queue", region = local.region,
      view = "timeSeries", period = 300, metrics = concat(local.lambda_lines,
    [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.dead_letters.name, { stat = "Maximum", yAxis = "right" }]]) } }],
  )
}

resource "aws_cloudwatch_dashboard" "pipeline" {
  count          = var.dashboard ? 1 : 0
  dashboard_name = "${var.name_prefix}-pipeline"
  dashboard_body = jsonencode({ widgets = local.widgets })
}
