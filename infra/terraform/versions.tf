# Resources and arguments here exist in hashicorp/aws 3.39 (what the offline test runs, the
# newest provider that installs without network here) and in 5.x/6.x (what users run): no
# inline aws_s3_bucket blocks (split out in 4.x), no is_enabled/state on event rules.
terraform {
  required_version = ">= 1.2"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 3.39, < 7.0"
    }
  }
}
