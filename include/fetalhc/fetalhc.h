// fetalhc/fetalhc.h - the whole public API in one include.
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
#include "fetalhc/segmenter.h"
#include "fetalhc/trainer.h"
#include "fetalhc/uncertainty.h"
#include "fetalhc/video.h"
