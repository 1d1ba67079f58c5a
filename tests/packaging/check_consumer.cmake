# Builds and runs tests/packaging/consumer against mp, either installed into a temporary prefix (find_package)
# or pulled in with add_subdirectory: its two programs link mp::mp (header-only) and mp::mp_compiled.
# Usage: cmake -DSOURCE= -DWORK= -DMODE= -DCXX= -P check_consumer.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}")
  endif()
endfunction()

set(consumer_args -DCMAKE_CXX_COMPILER=${CXX} -DMP_CONSUMER_MODE=${MODE})
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/mp-build -DCMAKE_CXX_COMPILER=${CXX} -DMP_INSTALL=ON
      -DMP_BUILD_TESTS=OFF -DMP_BUILD_EXAMPLES=OFF -DMP_BUILD_BENCHMARKS=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
  run(${CMAKE_COMMAND} --build ${WORK}/mp-build --parallel 2)  # mp_compiled: the install copies the built library
  run(${CMAKE_COMMAND} --install ${WORK}/mp-build)
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  list(APPEND consumer_args -DMP_SOURCE_DIR=${SOURCE})
endif()
run(${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/consumer -B ${WORK}/consumer-build ${consumer_args})
run(${CMAKE_COMMAND} --build ${WORK}/consumer-build --parallel 2)
foreach(program IN ITEMS consumer consumer_compiled)
  execute_process(COMMAND ${WORK}/consumer-build/${program} RESULT_VARIABLE status OUTPUT_VARIABLE out)
  if(NOT status EQUAL 0 OR NOT out MATCHES "consumer: child exited with 7")
    message(FATAL_ERROR "${program} failed (${status}): ${out}")
  endif()
endforeach()
