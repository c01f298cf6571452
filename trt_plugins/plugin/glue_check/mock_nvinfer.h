/* The mock libnvinfer's extras for glue_check.cpp (see mock_nvinfer.cpp). */
#ifndef MINFER_MOCK_NVINFER_H
#define MINFER_MOCK_NVINFER_H

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#define MINFER_MOCK_EXPORT __attribute__((visibility("default")))

/* Warnings and errors logged through getLogger() or the logger finder, oldest first. */
MINFER_MOCK_EXPORT const std::vector<std::string>& mock_logged_messages();

#endif  // MINFER_MOCK_NVINFER_H
