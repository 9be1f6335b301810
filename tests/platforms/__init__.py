"""Where it runs: Lambda events, API Gateway, the images, the deployment files."""
