"""sources/task_api"""
