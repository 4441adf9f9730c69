// fetalhc/fetalhc.h - the public measurement API in one include. The trainer (fetalhc/trainer.h),
// the HTTP server (fetalhc/server.h) and the store (fetalhc/store.h) have their own headers.
#pragma once

#include "fetalhc/csv.h"
#include "fetalhc/dicom.h"
#include "fetalhc/ellipse.h"
#include "fetalhc/evaluation.h"
#include "fetalhc/expected.h"
#include "fetalhc/growth.h"
#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "fetalhc/metrics.h"
#include "fetalhc/overlay.h"
#include "fetalhc/report.h"
#include "fetalhc/segmentation.h"
#include "fetalhc/segmenter.h"
#include "fetalhc/uncertainty.h"
#include "fetalhc/video.h"
