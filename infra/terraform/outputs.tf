output "bucket" {
  description = "FANOUT_BUCKET: upload requests/<user>/<request>/images/* then request.json here."
  value       = aws_s3_bucket.data.id
}

output "requests_table" {
  description = "FANOUT_REQUESTS_TABLE (the queue)."
  value       = aws_dynamodb_table.requests.name
}

output "models_table" {
  description = "FANOUT_MODELS_TABLE (trained models per user)."
  value       = aws_dynamodb_table.models.name
}

output "function_arns" {
  description = "Function ARN per handler (on_upload, launch_pending, on_job_state_change, on_task_artifact)."
  value       = { for k, f in aws_lambda_function.handler : k => f.arn }
}

output "function_names" {
  description = "Function name per handler (what scripts/check_stack.py reads back)."
  value       = { for k, f in aws_lambda_function.handler : k => f.function_name }
}

output "lambda_role_arns" {
  description = "Execution role per handler."
  value       = { for k, r in aws_iam_role.handler : k => r.arn }
}

output "sagemaker_role_arn" {
  description = "FANOUT_ROLE_ARN: the role the training jobs assume."
  value       = aws_iam_role.sagemaker.arn
}

output "image_uri" {
  description = "FANOUT_IMAGE_URI the launcher puts in each job."
  value       = local.image_uri
}

output "ecr_repository_url" {
  description = "Where to push the training image (empty when create_ecr_repository is false)."
  value       = var.create_ecr_repository ? aws_ecr_repository.trainer[0].repository_url : ""
}

output "environment" {
  description = "The FANOUT_* settings every function runs with (also for `fanout bootstrap/status` by hand)."
  value       = local.environment
}

output "event_bus" {
  description = "FANOUT_EVENT_BUS: where the lifecycle events go (empty when lifecycle_events is false); subscribe with a rule on it."
  value       = local.event_bus
}

output "event_bus_arn" {
  description = "ARN of that bus (the functions may PutEvents there only)."
  value       = local.event_bus_arn
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify (subscribe your e-mail, chat or pager to it); empty when alarms is false."
  value       = local.alarm_topic
}

output "dashboard_name" {
  description = "The CloudWatch dashboard (empty when dashboard is false)."
  value       = join("", aws_cloudwatch_dashboard.pipeline[*].dashboard_name)
}

output "serve_endpoint_name" {
  description = "The inference endpoint (empty when serve_endpoint is false): POST {\"model\": \"<user_id>/<model_id>\", \"prompt\": ...}."
  value       = var.serve_endpoint ? aws_sagemaker_endpoint.serve[0].name : ""
}

output "serve_role_arn" {
  description = "The endpoint's execution role (empty when serve_endpoint is false)."
  value       = var.serve_endpoint ? aws_iam_role.serve[0].arn : ""
}
